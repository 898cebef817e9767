"""Data-parallel training under `msrun` (MindSpore's launcher): process group, batch layout, collectives.

`msrun --worker_num=N ... python -m ms_semiseg train --distributed` starts N workers (and a scheduler process that
runs the same command and never leaves `init()`). Every worker holds a full replica of student, teacher, optimizer
and prototype bank; what keeps the replicas equal:
- weights: every rank starts from rank 0's parameters (broadcast after building and loading), and the gradients
  are averaged over ranks before SGD (`gradient_reducer`), so every rank applies the same update;
- the PCR prototype bank: the per-prototype feature sums and counts are summed over ranks (`rank_sum`) before the
  momentum update, which is then the update a single device would make from the global batch;
- the teacher: an EMA of identical students; k-means prototypes: computed by every rank, rank 0's broadcast;
- BatchNorm: SyncBatchNorm on GPU/Ascend (`use_sync_bn`); on CPU each device normalises with its own batch
  statistics, and the moving statistics (not part of the gradient) are averaged over ranks before every
  validation and checkpoint (`sync_replicas`), which also verifies that all replicas are bit-identical.
The global batch does not depend on N: `dataset.batch_size` is per device, the pipeline gives rank r the rows
r, r + N, r + 2N, ... of each global batch, and the host-drawn randomness of a step (dropout masks, CutMix boxes)
is drawn for the global batch and sliced the same way (`DataParallel.local_rows`). Logged losses are the
means over ranks. Files (log.csv, checkpoints, plots) are written by rank 0 only (`main_process_only`).
"""
import functools
import os
import zlib
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..config import check, get
from ..errors import UserError

MSRUN_ROLE_ENV = "MS_ROLE"  # set by msrun for its scheduler (MS_SCHED) and workers (MS_WORKER)
MSRUN_WORLD_ENV = "MS_WORKER_NUM"
DUMP_ENV = "MS_SEMISEG_DUMP_RANKS"  # debugging: folder where every rank writes its final parameters
SYNC_BN_DEVICES = ("GPU", "Ascend")
BN_STATISTICS = ("moving_mean", "moving_variance")
# CPU collectives only sum float32: integers travel as 12-bit digits, whose sums stay exact below 2**24
_DIGIT_BITS, _DIGITS = 12, 5


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the run (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world_size: int = 1
    device: str = "CPU"

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def local_rows(self, batch_size, rows=None):
        """Indices, in the global batch, of this device's `rows` local rows (default `batch_size`).

        Local rows come in segments of `batch_size` (e.g. labeled then unlabeled images); local row j of segment
        s is global row s * batch_size * N + j * N + rank, the sample the pipeline gives this rank."""
        local = np.arange(batch_size if rows is None else rows)
        segment, within = np.divmod(local, batch_size)
        return segment * batch_size * self.world_size + within * self.world_size + self.rank

    def row_shard(self, batch_size):
        """For `masks.dropout_keep_masks`: `rows -> (rows * N, this rank's local_rows)`; None on one device."""
        if not self.enabled:
            return None
        return lambda rows: (rows * self.world_size, self.local_rows(batch_size, rows))

    def shard(self, count):
        """This rank's items of `count` (validation images): rank, rank + N, ..."""
        return range(self.rank, count, self.world_size)


_CONTEXT = DataParallel()


def context():
    """The process's DataParallel (set by `start`)."""
    return _CONTEXT


def is_main_process():
    return _CONTEXT.is_main


def main_process_only(function):
    """Decorator: `function` runs on rank 0 only (file writes, console messages); other ranks get None."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs) if _CONTEXT.is_main else None
    return wrapper


# ----------------------------------------------------------------------------------------------------- launch


def launched_by_msrun():
    return bool(os.environ.get(MSRUN_ROLE_ENV))


def requested_world_size(distributed):
    """Number of workers the run will have, known before `init()` (msrun exports it); checks flag vs launcher."""
    if not distributed:
        if launched_by_msrun():
            raise UserError(f"--distributed: missing, but this process was started by msrun ({MSRUN_ROLE_ENV}="
                            f"{os.environ[MSRUN_ROLE_ENV]}), expected `python -m ms_semiseg train --distributed` "
                            "so that the workers train one model together")
        return 1
    if not launched_by_msrun():
        raise UserError("--distributed: this process was not started by msrun (no MS_ROLE in the environment), "
                        "expected `msrun --worker_num=N --local_worker_num=N --master_port=P --join=True "
                        "python -m ms_semiseg train --distributed ...` or `NPROC=N bash train.sh`")
    return int(os.environ.get(MSRUN_WORLD_ENV, "1"))


def start(device=None, expected_world_size=None):
    """Joins the msrun cluster: sets the device, `init()`, data-parallel context; returns the DataParallel.

    msrun's scheduler process runs the same command line: it stays inside `init()` until the workers are done."""
    global _CONTEXT
    from mindspore.communication import get_group_size, get_rank, init
    from mindspore.context import ParallelMode
    from ..device import set_device
    device = set_device(device)
    if device in SYNC_BN_DEVICES and os.environ.get("DEVICE_ID", "").isdigit():
        ms.set_device(device, int(os.environ["DEVICE_ID"]))  # msrun: the local rank's accelerator
    init()
    rank, world_size = get_rank(), get_group_size()
    if expected_world_size is not None and world_size != expected_world_size:
        raise RuntimeError(f"msrun announced {expected_world_size} workers, the cluster has {world_size}")
    ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world_size)
    _CONTEXT = DataParallel(rank, world_size, device)
    return _CONTEXT


# -------------------------------------------------------------------------------------------------- BatchNorm


@dataclass(frozen=True)
class BatchNormSettings:
    """`net.sync_bn` (upstream default True) and `trainer.freeze_bn` (default false), validated at start-up."""
    sync: bool = True
    freeze: bool = False


def batch_norm_settings(cfg):
    freeze = get(cfg, "trainer.freeze_bn", False)
    check("trainer.freeze_bn", freeze, isinstance(freeze, bool), "true or false")
    return BatchNormSettings(sync=bool(get(cfg, "net.sync_bn", True)), freeze=freeze)  # upstream: any truthy value


def use_sync_bn(settings, dist=None, warn=print):
    """Whether the models get SyncBatchNorm: `net.sync_bn` (BatchNormSettings), more than one device, a
    backend that has it, and BatchNorm not frozen. On CPU, one warning line and per-device BatchNorm."""
    dist = dist or _CONTEXT
    if not (dist.enabled and settings.sync) or settings.freeze:
        return False
    if dist.device not in SYNC_BN_DEVICES:
        if dist.is_main:
            warn(f"warning: net.sync_bn: SyncBatchNorm is not available on {dist.device}; each of the "
                 f"{dist.world_size} devices normalises with its own batch statistics (plain BatchNorm)")
        return False
    return True


def freeze_batch_norm(cell):
    """Every BatchNorm of `cell` normalises with its moving statistics and leaves them unchanged, in train mode
    too (`trainer.freeze_bn`; gamma and beta still train). Must run before the graphs compile."""
    count = 0
    for _, layer in cell.cells_and_names():
        if isinstance(layer, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            layer.use_batch_statistics = False
            count += 1
    return count


# ------------------------------------------------------------------------------------------ in-graph reductions


class _Identity(nn.Cell):
    def construct(self, x):
        return x


class _RankReduce(nn.Cell):
    """x summed (or averaged) over ranks; inside a compiled step."""

    def __init__(self, world_size, mean):
        super().__init__()
        self.all_reduce = ops.AllReduce()
        self.scale = 1.0 / world_size if mean else 1.0

    def construct(self, x):
        return self.all_reduce(x) * self.scale


def gradient_reducer(parameters):
    """Averages a gradient tuple over ranks (identity on one device)."""
    if not _CONTEXT.enabled:
        return _Identity()
    return nn.DistributedGradReducer(parameters, mean=True, degree=_CONTEXT.world_size)


def rank_sum():
    """Cell summing a tensor over ranks (identity on one device): prototype statistics."""
    return _RankReduce(_CONTEXT.world_size, mean=False) if _CONTEXT.enabled else _Identity()


def rank_mean():
    """Cell averaging a tensor over ranks (identity on one device): the logged losses."""
    return _RankReduce(_CONTEXT.world_size, mean=True) if _CONTEXT.enabled else _Identity()


# ---------------------------------------------------------------------------------------- host-side collectives


def broadcast_array(array):
    """Rank 0's float32 array on every rank."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not _CONTEXT.enabled:
        return array
    return ops.Broadcast(0)((Tensor(array),))[0].asnumpy()


def _sum_float32(array):
    return ops.AllReduce()(Tensor(np.ascontiguousarray(array, dtype=np.float32))).asnumpy()


def encode_digits(values):
    """Non-negative int64 values < 2**60 -> float32 digits (..., _DIGITS) of _DIGIT_BITS bits each."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() >= 1 << (_DIGIT_BITS * _DIGITS)):
        raise ValueError("only counts in [0, 2**60) can be summed over ranks")
    shifts = np.arange(_DIGITS, dtype=np.int64) * _DIGIT_BITS
    return ((values[..., None] >> shifts) & ((1 << _DIGIT_BITS) - 1)).astype(np.float32)


def decode_digits(digits):
    """Inverse of `encode_digits` for digit sums (exact while each sum is below 2**24)."""
    shifts = np.arange(_DIGITS, dtype=np.int64) * _DIGIT_BITS
    return (np.rint(digits).astype(np.int64) << shifts).sum(axis=-1)


def sum_counts(values):
    """int64 counts summed over ranks, exactly (CPU collectives sum float32 only)."""
    values = np.asarray(values, dtype=np.int64)
    if not _CONTEXT.enabled:
        return values
    return decode_digits(_sum_float32(encode_digits(values)))


def merged_iou(meter):
    """An IoUAccumulator with `meter`'s intersection/union counts summed over ranks (validation shards)."""
    from ..eval import IoUAccumulator
    if not _CONTEXT.enabled:
        return meter
    counts = sum_counts(np.stack([meter.intersection, meter.union]))
    merged = IoUAccumulator(meter.num_classes, meter.ignore_index)
    merged.merge(counts[0], counts[1])
    return merged


def _flat(params):
    return np.concatenate([param.asnumpy().reshape(-1) for param in params]) if params else np.zeros(0, np.float32)


def _assign_flat(params, flat):
    offset = 0
    for param in params:
        size = int(np.prod(param.shape))
        param.set_data(Tensor(flat[offset:offset + size].reshape(param.shape).astype(np.float32)))
        offset += size


def _float_params(cell):
    return [param for param in cell.get_parameters() if param.dtype == ms.float32]


def broadcast_parameters(cell):
    """Every float32 parameter of `cell` := rank 0's (one flat broadcast), as torch DDP does at construction:
    the replicas start equal whatever the initialisers do in each process (without a common seed, measured, the
    workers' random initial weights differ)."""
    if _CONTEXT.enabled:
        params = _float_params(cell)
        _assign_flat(params, broadcast_array(_flat(params)))


def _is_bn_statistic(name):
    return name.rsplit(".", 1)[-1] in BN_STATISTICS


def average_bn_statistics(cell):
    """BatchNorm moving statistics := their mean over ranks (per-device BatchNorm lets them drift apart)."""
    if _CONTEXT.enabled:
        params = [param for name, param in cell.parameters_and_names() if _is_bn_statistic(name)]
        _assign_flat(params, _sum_float32(_flat(params)) / _CONTEXT.world_size)


def _fingerprints(named_params):
    """float32 (n, 2): CRC32 of each parameter's bytes as two exact 16-bit halves."""
    crcs = np.array([zlib.crc32(param.asnumpy().tobytes()) for _, param in named_params], dtype=np.int64)
    return np.stack([crcs >> 16, crcs & 0xFFFF], axis=1).astype(np.float32)


def check_replicas_agree(cell):
    """Raises RuntimeError naming the parameters whose bytes differ between ranks (a data-parallel bug); the
    dropout keep masks (per-step inputs, each rank's rows of the global batch) are left out."""
    from .masks import is_dropout_mask
    if not _CONTEXT.enabled:
        return
    named = [(name, param) for name, param in cell.parameters_and_names() if not is_dropout_mask(name)]
    local = _fingerprints(named)
    gathered = ops.AllGather()(Tensor(local[None])).asnumpy()  # (world, n, 2)
    differs = np.any(gathered != gathered[:1], axis=(0, 2))
    if differs.any():
        names = [name for (name, _), bad in zip(named, differs) if bad]
        raise RuntimeError(f"data-parallel replicas diverged: {len(names)} parameter(s) differ between ranks, "
                           f"e.g. {names[:5]}")


def sync_replicas(cell):
    """Before validation and checkpoints: BatchNorm statistics averaged, then every parameter verified equal."""
    average_bn_statistics(cell)
    check_replicas_agree(cell)


def dump_rank_parameters(cell, extra=None):
    """With MS_SEMISEG_DUMP_RANKS=<folder>: every rank writes its parameters (and `extra` {name: array}, e.g.
    BRPG's state, as `extra.<name>`) to <folder>/rank<r>.ckpt, to compare the replicas from outside (tests)."""
    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return None
    from .state import EXTRA_PREFIX, model_params
    from ..utils.checkpoint import save_params_atomic
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank{_CONTEXT.rank}.ckpt")
    entries = dict(model_params(cell))
    entries.update({EXTRA_PREFIX + name: value for name, value in (extra or {}).items()})
    save_params_atomic(entries, path)
    return path
