"""The one seed-key scheme of training: every host-side random draw of a run comes from `stream_rng(stream, seed,
*position)`, so a resumed run replays the same randomness and no two draws share a Generator.

A key is [seed, position padded with zeros to POSITION_FIELDS fields, the stream's tag]. numpy's SeedSequence drops
trailing zeros ([s, e, 0] and [s, e] seed the same Generator), so the last field, the tag, is never zero; the fixed
length keeps positions apart and the tags keep streams apart. A field of 2**32 or more takes two words in the
key, but only the seed can be that large and it is the first field, so such keys are longer, never equal to
another's. `tests/test_seeds.py` checks that no two streams collide.
"""
from enum import IntEnum

import numpy as np

POSITION_FIELDS = 4


class Stream(IntEnum):
    """The random streams of a run and the position fields each one is keyed by."""
    CUTMIX = 1  # (epoch, iteration): the CutMix boxes of the global batch
    PATCH_SELECT = 2  # (epoch, iteration): PCR's patch pixels
    STUDENT_DROPOUT = 3  # (epoch, iteration): the student's dropout keep masks (global batch)
    TEACHER_DROPOUT = 4  # (epoch, iteration): the teacher's
    PERMUTATION = 5  # (epoch, data stream): the order of a data stream in an epoch
    AUGMENTATION = 6  # (epoch, data stream, position): one sample's augmentation
    STRONG_VIEW = 7  # (epoch, position): an unlabeled sample's strong view
    BRPG_SAMPLING = 8  # (epoch, iteration, rank): BRPG's CPG noise (each device draws its own)
    BRPG_LOSS_PIXELS = 9  # (epoch, iteration, rank): BRPG's loss-pixel noise
    PROTO_INIT_PIXELS = 10  # (): the patch pixels of PCR's prototype initialisation
    PROTO_INIT_RESERVOIR = 11  # (): its per-class reservoir keys


def seed_key(stream, seed, *position):
    """The SeedSequence entropy of `stream` at `position` (at most POSITION_FIELDS non-negative ints)."""
    if len(position) > POSITION_FIELDS:
        raise ValueError(f"{Stream(stream).name}: {len(position)} position fields, at most {POSITION_FIELDS}")
    fields = (int(seed),) + tuple(int(value) for value in position) + (0,) * (POSITION_FIELDS - len(position))
    return list(fields) + [int(Stream(stream))]


def stream_rng(stream, seed, *position):
    """The Generator of `stream` at `position` (see the module notes)."""
    return np.random.default_rng(seed_key(stream, seed, *position))
