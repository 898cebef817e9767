"""The seed keys of training (`ms_semiseg/engine/seeds.py`): no two random streams, nor two positions of one
stream, seed the same Generator."""
import itertools

import numpy as np
import pytest

from ms_semiseg.engine.seeds import POSITION_FIELDS, Stream, seed_key, stream_rng

# the position fields each stream is keyed by (engine/seeds.py) and a small range for each
POSITIONS = {
    Stream.CUTMIX: 2, Stream.PATCH_SELECT: 2, Stream.STUDENT_DROPOUT: 2, Stream.TEACHER_DROPOUT: 2,
    Stream.PERMUTATION: 2, Stream.AUGMENTATION: 3, Stream.STRONG_VIEW: 2, Stream.BRPG_SAMPLING: 3,
    Stream.BRPG_LOSS_PIXELS: 3, Stream.PROTO_INIT_PIXELS: 0, Stream.PROTO_INIT_RESERVOIR: 0,
}


def test_every_stream_has_its_positions_listed():
    assert set(POSITIONS) == set(Stream)


def test_no_two_streams_or_positions_share_a_generator():
    """Every key over seeds 0-2 (and one of 2**32 or more) and positions 0-3 in each field: the SeedSequence states
    are all different, trailing zeros included (numpy drops them from a key, the tag keeps them)."""
    seen = {}
    for stream, fields in POSITIONS.items():
        for seed in (0, 1, 2, 2**32 + 1):
            for position in itertools.product(range(4), repeat=fields):
                state = tuple(np.random.SeedSequence(seed_key(stream, seed, *position)).generate_state(4))
                where = (stream.name, seed, position)
                assert state not in seen, f"{where} and {seen[state]} seed the same Generator"
                seen[state] = where
    assert len(seen) == sum(4 * 4 ** fields for fields in POSITIONS.values())


def test_a_key_replays_and_is_checked():
    assert stream_rng(Stream.CUTMIX, 2, 0, 1).random() == stream_rng(Stream.CUTMIX, 2, 0, 1).random()
    assert len(seed_key(Stream.CUTMIX, 2, 0)) == POSITION_FIELDS + 2
    with pytest.raises(ValueError):
        seed_key(Stream.AUGMENTATION, 2, *range(POSITION_FIELDS + 1))
