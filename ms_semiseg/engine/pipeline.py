"""Training batches on `mindspore.dataset`: labeled + unlabeled streams in lockstep with U2PL's weak augmentation.

Epoch composition (spec B.3, U2PL `voc_dset` / `build_voc_semi_loader`):
- semi: both streams have N_u = len(unlabeled list) rows per epoch (U2PL writes 10582 - n_sup / 2975 - n_sup,
  the same number for the shipped splits). Each list is turned into N_u entries once per run exactly as U2PL does:
  `random.seed(seed)`, repeat the list ceil(N_u / n) times when it is shorter, then `random.sample(list, N_u)`.
- supervised-only (`semi=False`): the plain labeled list, n_l rows per epoch (U2PL's train_sup builds its loader
  with the dataset's split="val" branch, i.e. no repeat). U2PL keeps the last partial batch there; we drop it,
  because the compiled step needs fixed shapes.
- Every epoch shuffles the entries with a permutation seeded by (seed, epoch, stream) - the role of
  DistributedSampler.set_epoch - and keeps the first iterations * B * world_size positions (drop_last).
  Global batch i is positions [i*B*W, (i+1)*B*W); rank r takes the positions p = r (mod W) of it, which is what
  `GeneratorDataset(num_shards=W, shard_id=r)` does with an unshuffled source. So the global batches do not
  depend on the world size: one device at batch 16 sees what 8 devices at batch 2 see together. (torch's
  DistributedSampler pads instead of truncating: 656 iterations for VOC-92 at 8x2 where we run 10490 // 16 = 655.)
- The augmentation of position p draws from numpy Generator(seed, epoch, stream, p), so a batch is the same
  whatever the worker count or scheduling, and a resumed epoch (`start_iteration`) replays the same batches.
- `dataset.train.strong_view` (BRPG / UniMatch): the unlabeled stream also yields a strong view of each weak
  crop (colour jitter, grayscale, blur: `transforms.strong_view`), from its own per-position Generator.
- A sample that cannot be read (corrupt or empty image, bad label: a UserError of the reader), met by a loader
  worker mid-epoch: `dataset.on_bad_image: error` (default) stops the run with the reader's one-line message
  (MindSpore wraps exceptions of the source into its own error text: the source records the UserError and marks
  its message, `TrainPipeline` raises it again); `skip` takes the next readable sample of the same list instead
  (dataset index + 1, + 2, ...: the same choice whatever the worker scheduling) and records the file in
  `SkippedSamples`, listed at the end of the run.
"""

import math
import os
import random
import signal
import threading

import mindspore.dataset as ds
import numpy as np

from ms_semiseg.data.datasets import build_dataset, read_split_list
from ms_semiseg.data.transforms import build_transform, strong_view
from ms_semiseg.errors import MarkedUserError, UserError, user_error_in

from .seeds import Stream, stream_rng
from .train_data import labeled_list_path, positive_int, required_path, unlabeled_list_path

LABELED_STREAM, UNLABELED_STREAM = 0, 1
# Threads, not processes: on the 2-core CPU box (375x500 JPEG pairs, crop 321, batch 2, 2 workers) threads gave
# 36-39 pairs/s and processes 28-34 (they pickle the source, start a pool per epoch and copy rows through shared
# memory); cv2 decode/resize and large numpy ops release the GIL, so threads still run in parallel.
PYTHON_MULTIPROCESSING = False


class SkippedSamples:
    """Training samples left out by `dataset.on_bad_image: skip`: {file: the reader's message}, shared by the
    loader threads (the pipeline runs its workers as threads: PYTHON_MULTIPROCESSING)."""

    def __init__(self, messages=()):
        self._lock = threading.Lock()
        self._bad = set()  # (id of the reader, index)
        self.messages = {self.culprit(message): message for message in messages}

    # MindSpore copies (dill-pickles) the source for its loader workers; the copies must share this record: a
    # copy resolves to the same object through a process-wide registry (the workers are threads of this process)
    def __reduce__(self):
        _SKIPPED_REGISTRY[id(self)] = self
        return _registered_skipped, (id(self),)

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    @staticmethod
    def culprit(message):
        """The file a reader's message names (its text up to the first ': ')."""
        return str(message).split(": ", 1)[0]

    def is_bad(self, reader, index):
        return (id(reader), index) in self._bad

    def add(self, reader, index, error):
        with self._lock:
            self._bad.add((id(reader), index))
            self.messages.setdefault(self.culprit(error), str(error))

    def __len__(self):
        return len(self.messages)

    def summary(self, shown=20):
        """Lines listing the skipped files (at most `shown`), empty when none."""
        if not self.messages:
            return []
        lines = [f"  skipped:     {len(self.messages)} unreadable training file(s) (dataset.on_bad_image: skip):"]
        lines += [f"               {message}" for message in list(self.messages.values())[:shown]]
        if len(self.messages) > shown:
            lines.append(f"               ... and {len(self.messages) - shown} more")
        return lines


_SKIPPED_REGISTRY = {}


def _registered_skipped(key):
    # a spawned worker process cannot share the record: it gets its own (counts are then per process)
    return _SKIPPED_REGISTRY.get(key) or SkippedSamples()


# ------------------------------------------------------------------------------------------------ composition


def u2pl_entries(indices, length, seed):
    """U2PL's per-run list of `length` entries: `random.seed(seed)`, repeat the list ceil(length / n) times if it
    is shorter than `length`, then `random.sample(list, length)` (each item appears at most ceil(length / n) times;
    a longer list is subsampled)."""
    indices = list(indices)
    if len(indices) < length:
        indices = indices * math.ceil(length / len(indices))
    return random.Random(seed).sample(indices, length)


def epoch_length(data, semi=True):
    """Rows per epoch before batching: N_u (semi) or n_l (supervised-only); `data`: the run's TrainData."""
    path = unlabeled_list_path(data) if semi else labeled_list_path(data)
    return len(read_split_list(path))


def iterations_per_epoch(data, batch_size, world_size=1, semi=True):
    """N // (batch_size * world_size), N as in `epoch_length`; reads only the split lists."""
    global_batch = positive_int(batch_size, "dataset.batch_size") * positive_int(world_size, "world_size")
    rows = epoch_length(data, semi)
    iterations = rows // global_batch
    if iterations == 0:
        kind = "unlabeled" if semi else "labeled"
        raise UserError(f"dataset.batch_size: {batch_size} x {world_size} device(s) exceeds the {rows} {kind} "
                        f"images of an epoch, expected a global batch of at most {rows}")
    return iterations


class _EpochSource:
    """Random-access source of one epoch: row i is global position start + i (see the module notes)."""

    def __init__(self, labeled, unlabeled, transform, seed, epoch, orders, start, stop, strong_view=False,
                 skipped=None, label_u=False):
        self.labeled, self.unlabeled, self.transform = labeled, unlabeled, transform
        self.seed, self.epoch, self.orders = seed, epoch, orders
        self.start, self.stop = start, stop
        self.strong_view = strong_view
        self.label_u = label_u  # also yield the unlabeled image's true label (the oracle diagnostic)
        self.skipped = skipped  # SkippedSamples with dataset.on_bad_image: skip, else None
        self.error = None  # the first UserError a worker met (MindSpore re-raises it wrapped in its own text)

    def __len__(self):
        return self.stop - self.start

    def _augmented(self, stream, position):
        dataset = self.labeled if stream == LABELED_STREAM else self.unlabeled
        image, label = self._read(dataset, int(self.orders[stream][position]))
        rng = stream_rng(Stream.AUGMENTATION, self.seed, self.epoch, stream, position)
        return self.transform(image, label, rng)

    def _read(self, dataset, index):
        """(image, label) of sample `index`, or with skipping the next readable one (module notes)."""
        for offset in range(len(dataset)):
            candidate = (index + offset) % len(dataset)
            if self.skipped is not None and self.skipped.is_bad(dataset, candidate):
                continue
            try:
                image, label, _ = dataset[candidate]
                return image, label
            except UserError as exc:
                if self.skipped is None:
                    self.error = self.error or exc
                    raise MarkedUserError(exc) from None
                self.skipped.add(dataset, candidate, exc)
        error = UserError(f"{dataset.list_path}: none of its {len(dataset)} samples can be read (dataset."
                          "on_bad_image: skip), expected readable images")
        self.error = self.error or error
        raise MarkedUserError(error)

    def __getitem__(self, index):
        position = self.start + index
        image_l, label_l = self._augmented(LABELED_STREAM, position)
        row = (image_l, label_l.astype(np.int32))
        if self.unlabeled is not None:
            image_u, label_u = self._augmented(UNLABELED_STREAM, position)
            row += (image_u,) + ((label_u.astype(np.int32),) if self.label_u else ())
            if self.strong_view:
                row += (self._strong_view(image_u, position),)
        return row

    def _strong_view(self, weak, position):
        rng = stream_rng(Stream.STRONG_VIEW, self.seed, self.epoch, position)
        return strong_view(weak, self.transform.mean, self.transform.std, rng)


def _per_run_entries(labeled, unlabeled, seed):
    """{stream: dataset indices of the run's list}: U2PL's seeded repeat/sample to N_u entries per stream when
    semi-supervised (unlabeled given), the plain labeled list otherwise."""
    if unlabeled is None:
        return {LABELED_STREAM: list(range(len(labeled)))}
    rows = len(unlabeled)
    return {LABELED_STREAM: u2pl_entries(range(len(labeled)), rows, seed),
            UNLABELED_STREAM: u2pl_entries(range(rows), rows, seed)}


def _epoch_orders(per_run_entries, seed, epoch):
    """{stream: dataset index at each epoch position}: the per-run entries shuffled by (seed, epoch, stream)."""
    orders = {}
    for stream, entries in per_run_entries.items():
        permutation = stream_rng(Stream.PERMUTATION, seed, epoch, stream).permutation(len(entries))
        orders[stream] = np.asarray(entries, dtype=np.int64)[permutation]
    return orders


class TrainPipeline:
    """One epoch of batches for one rank: `len()` iterations of
    {"image_l": float32 [B,3,H,W], "label_l": int32 [B,H,W] (255 = ignore), "image_u": float32 [B,3,H,W]}
    ("image_u" only when semi), plus "image_u_strong" float32 [B,3,H,W] (the strong view of "image_u") when
    `dataset.train.strong_view` is true."""

    def __init__(self, dataset, columns, iterations, batch_size, source=None):
        self.dataset, self.columns = dataset, columns
        self.iterations, self.batch_size = iterations, batch_size
        self.source = source

    def __len__(self):
        return self.iterations

    def __iter__(self):
        handlers = _python_signal_handlers()
        iterator = self.dataset.create_dict_iterator(output_numpy=True, num_epochs=1)
        try:
            for index, batch in enumerate(iterator):
                if index == 0:
                    _reinstall(handlers)
                yield {name: batch[name] for name in self.columns}
        except RuntimeError as exc:  # MindSpore's wrapping of an exception raised in the source
            error = getattr(self.source, "error", None) or user_error_in(exc)
            if error is None:
                raise
            raise error from None
        finally:
            iterator.stop()  # the loader threads end here, also when the loop is left early (an interrupt)
            _reinstall(handlers)


def _python_signal_handlers():
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def _reinstall(handlers):
    """MindSpore's dataset engine installs its own SIGINT/SIGTERM handlers (C level) when a pipeline starts, and
    they terminate the whole process group at once: put the Python ones back (the trainer's clean stop, Python's
    KeyboardInterrupt) once the first batch has arrived."""
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


def train_data_root(data, override=None):
    """dataset.train.data_root (relative to the config's folder), or `override` (a command-line path: cwd)."""
    if override:
        return os.path.abspath(os.path.expanduser(override))
    return required_path(data.root, "dataset.train.data_root")


def train_readers(data, semi, data_root=None, unlabeled_labels=False):
    """(labeled reader, unlabeled reader or None) of the TrainData `data` (data_root overrides its data_root);
    the unlabeled reader reads label files too with `unlabeled_labels` (the oracle diagnostic)."""
    root = train_data_root(data, data_root)
    labeled = build_dataset(data.section, "train", root, labeled_list_path(data), data.num_classes)
    unlabeled = None
    if semi:
        unlabeled = build_dataset(data.section, "train", root, unlabeled_list_path(data), data.num_classes,
                                  with_labels=unlabeled_labels)
    return labeled, unlabeled


def build_train_pipeline(data, seed, epoch, batch_size, rank=0, world_size=1, num_workers=None, semi=True,
                         start_iteration=0, data_root=None, iterations=None, skipped=None, label_u=False):
    """Batches of epoch `epoch` for `rank` of `world_size` (module notes); deterministic in (seed, epoch).
    `data`: the run's TrainData (`train_data.train_data(cfg)`).

    start_iteration: skip that many iterations (resume inside an epoch); `len()` counts the remaining ones.
    num_workers: parallel loader workers, default `dataset.workers`. data_root overrides dataset.train.data_root.
    iterations: the epoch's length, at most (and by default) `iterations_per_epoch` (gradient accumulation drops
    the micro-batches of an incomplete last update).
    skipped: the run's SkippedSamples with `dataset.on_bad_image: skip` (a fresh one when None).
    label_u: with semi, also yield "label_u", the unlabeled images' true labels transformed with them
    (`trainer.unsupervised.oracle_pseudo_labels`, a diagnostic).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    full = iterations_per_epoch(data, batch_size, world_size, semi)
    iterations = full if iterations is None else iterations
    if not 0 < iterations <= full:
        raise ValueError(f"iterations {iterations} is outside 1..{full}")
    if not 0 <= start_iteration <= iterations:
        raise ValueError(f"start_iteration {start_iteration} is outside 0..{iterations}")
    if data.on_bad_image == "skip":
        skipped = SkippedSamples() if skipped is None else skipped
    else:
        skipped = None
    label_u = semi and label_u
    labeled, unlabeled = train_readers(data, semi, data_root, unlabeled_labels=label_u)
    global_batch = batch_size * world_size
    orders = _epoch_orders(_per_run_entries(labeled, unlabeled, seed), seed, epoch)
    strong = semi and data.strong_view
    source = _EpochSource(labeled, unlabeled, build_transform(data.section, "train"), seed, epoch, orders,
                          start_iteration * global_batch, iterations * global_batch, strong, skipped, label_u)
    columns = (["image_l", "label_l"] + (["image_u"] if semi else []) + (["label_u"] if label_u else [])
               + (["image_u_strong"] if strong else []))
    workers = data.workers if num_workers is None else positive_int(num_workers, "num_workers")
    dataset = ds.GeneratorDataset(
        source, column_names=columns, shuffle=False, num_parallel_workers=workers,
        python_multiprocessing=PYTHON_MULTIPROCESSING and workers > 1,
        num_shards=world_size if world_size > 1 else None, shard_id=rank if world_size > 1 else None)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return TrainPipeline(dataset, columns, iterations - start_iteration, batch_size, source)
