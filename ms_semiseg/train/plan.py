"""The training plan: the config's training settings validated into one frozen object before anything is built
or written (`plan_from_config`), and the data checks made before the first output file."""
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..config import check, get, is_number, net_config, number as _number, resolve_path
from ..data.datasets import build_dataset
from ..data.transforms import build_transform
from ..errors import UserError
from ..engine.distributed import BatchNormSettings, batch_norm_settings
from ..engine.optim import OptimizerSettings, optimizer_settings
from ..engine.pipeline import iterations_per_epoch, train_readers
from ..engine.steps import CONFIDENCE, ENTROPY_DROP, LossSettings
from ..engine.train_data import TrainData, train_data
from ..losses import supervised_criterion
from ..methods import method_class
from ..methods.pcr.proto_init import ProtoSettings, proto_settings

DEFAULT_LOG_INTERVAL = 10


@dataclass(frozen=True)
class TrainPlan:
    """What the config asks for, validated before anything is built: the steps, methods, pipeline and optimizer
    read this object (and the settings objects it holds), not the config."""
    epochs: int
    sup_only_epoch: int
    semi: bool
    batch_size: int
    crop: tuple
    use_proto: bool
    granularity: int
    losses: LossSettings
    optimizer: OptimizerSettings
    ema_decay: float
    drop_percent: float
    cutmix: bool
    oracle_rows: int  # diagnostic (docs/demo.md): how many of a batch's unlabeled images (the first ones) get their
    # true labels instead of the teacher's pseudo-labels (0: none, the method itself)
    log_interval: int
    save_interval: int
    save_epoch_interval: int  # last.ckpt (and curves.png; best.ckpt without validation) every N-th epoch end
    eval_on: bool
    iterations: int  # per epoch, micro-batches (a multiple of `accumulation`)
    batch: "GlobalBatch"  # defined below
    data: TrainData  # dataset.train (and the validation split's paths)
    val_crop: tuple  # dataset.val.crop.size, None: the training crop (or no validation)
    proto: ProtoSettings  # net.proto_head when PCR trains it, else None
    batch_norm: BatchNormSettings
    auto_resume: bool  # saver.auto_resume: continue from last.ckpt when there is one
    net: dict = field(repr=False, compare=False)  # the checked `net` section (a copy): the models are built from it
    criterion: Callable = field(repr=False, compare=False)  # the supervised loss of `criterion` (+ `criterion_2`)
    method: type = None  # the Method subclass the config asks for (`methods.method_class`)
    method_settings: Any = None  # its own validated settings (BRPG: BRPGSettings), else None

    @property
    def num_classes(self):
        return self.data.num_classes

    @property
    def accumulation(self):
        return self.batch.accumulation

    @property
    def total_steps(self):
        return self.epochs * self.iterations

    @property
    def total_updates(self):
        """Optimizer steps of the run: the poly LR schedule's length."""
        return self.total_steps // self.accumulation

    def applies_update(self, iteration):
        """Whether micro-batch `iteration` ends an update (always, without gradient accumulation)."""
        return (iteration + 1) % self.accumulation == 0

    @property
    def oracle_pseudo_labels(self):
        """Whether the pipeline must read the unlabeled images' labels (`oracle_rows`)."""
        return self.oracle_rows > 0

    @property
    def warmup_steps(self):
        return self.sup_only_epoch * self.iterations

    def is_semi_epoch(self, epoch):
        return self.semi and epoch >= self.sup_only_epoch

    def saves_after(self, epoch):
        """Whether the end of `epoch` (0-based) writes last.ckpt: every `save_epoch_interval`-th epoch and the last
        one (a stop request saves wherever it lands)."""
        done = epoch + 1
        return done % self.save_epoch_interval == 0 or done >= self.epochs


def _unsup_type(cfg):
    value = get(cfg, "trainer.unsupervised.loss_type", ENTROPY_DROP)
    if value not in (ENTROPY_DROP, CONFIDENCE):
        raise UserError(f"trainer.unsupervised.loss_type: {value!r} is not supported, expected "
                        f"{ENTROPY_DROP!r} (U2PL) or {CONFIDENCE!r} (conf >= confid_thresh)")
    return value


def _cutmix(cfg):
    value = get(cfg, "trainer.unsupervised.apply_aug", False)
    if value not in ("cutmix", False, None, "none"):
        raise UserError(f"trainer.unsupervised.apply_aug: {value!r} is not supported, expected cutmix or False")
    return value == "cutmix"


def _oracle(cfg, batch_size):
    """`trainer.unsupervised.oracle_pseudo_labels`: an upper bound for diagnosis, not a method. The student learns
    from the true labels of the unlabeled images (their label files must exist) with confidence 1, through the
    same step, losses, CutMix and schedule; entropy dropping still ranks pixels by the teacher's entropy. A number
    in [0, 1] is the share of each batch's unlabeled images that get their true labels (the first ones of the
    batch, whose order is random), the others keep the teacher's: true = 1, false = 0. Returns the number of
    images per (per-device) batch."""
    key = "trainer.unsupervised.oracle_pseudo_labels"
    value = get(cfg, key, False)
    check(key, value, isinstance(value, bool) or (is_number(value) and 0 <= value <= 1),
          "true or false, or the share of each batch's unlabeled images in [0, 1]")
    rows = round(float(value) * batch_size)
    check(key, value, rows > 0 or value == 0,
          f"a share that gives at least one of the {batch_size} unlabeled images of a batch (or false)")
    return rows


def _granularity(data, use_proto):
    granularity = data.granularity
    if use_proto and granularity is None:
        raise UserError("net.proto_head.patch_select: training the prototype head samples one pixel per patch, "
                        "expected patch_select: True")
    return granularity or 0


def loss_settings(cfg):
    aux_cfg = get(cfg, "net.aux_loss")
    return LossSettings(
        aux_weight=_number(cfg, "net.aux_loss.loss_weight", 0.4, 0.0) if aux_cfg else 0.0,
        unsup_type=_unsup_type(cfg),
        unsup_weight=_number(cfg, "trainer.unsupervised.loss_weight", 1.0, 0.0),
        confid_thresh=_number(cfg, "trainer.unsupervised.confid_thresh", 0.8, 0.0, 1.0),
        proto_weight=_number(cfg, "net.proto_head.loss_weight", 1.0, 0.0),
        proto_update=bool(get(cfg, "net.proto_head.dynamic_update_proto", True)))


LR_SCALINGS = ("none", "linear")


@dataclass(frozen=True)
class GlobalBatch:
    """Labeled images per optimizer step over all devices and accumulated micro-batches, and the LR factor.

    `trainer.base_batch_size`: the global batch the config's lr was tuned for (upstream: 2 per GPU x 8 GPUs = 16);
    `trainer.lr_scaling: linear` multiplies the lr by global / base (default none: published configs stay exact);
    `trainer.grad_accumulation: N` sums the gradients of N micro-batches into one update (reach the published
    global batch on fewer devices)."""
    per_device: int
    world_size: int
    accumulation: int
    base: int = None
    scaling: str = "none"

    @property
    def size(self):
        return self.per_device * self.world_size * self.accumulation

    @property
    def lr_scale(self):
        return self.size / self.base if self.scaling == "linear" else 1.0

    def describe(self, semi, lr):
        parts = [f"{self.per_device} per device"]
        if self.world_size > 1:
            parts.append(f"{self.world_size} devices")
        if self.accumulation > 1:
            parts.append(f"{self.accumulation} accumulated micro-batches")
        text = (f"global batch {self.size} labeled{' + ' + str(self.size) + ' unlabeled' if semi else ''} images "
                f"per update ({' x '.join(parts)})")
        if self.base is not None:
            text += f"; the config was tuned for {self.base} (trainer.base_batch_size)"
        if self.scaling == "linear":
            return text + f"; lr {lr:g} x {self.size}/{self.base} = {lr * self.lr_scale:g} (trainer.lr_scaling: linear)"
        if self.base is not None and self.base != self.size:
            text += (f"; lr {lr:g} kept (trainer.lr_scaling: none): set trainer.lr_scaling=linear to scale it, "
                     f"or trainer.grad_accumulation to reach {self.base}")
        return text


def global_batch(cfg, batch_size, world_size):
    accumulation = _number(cfg, "trainer.grad_accumulation", 1, 1, kind=int)
    base = get(cfg, "trainer.base_batch_size")
    if base is not None:
        base = _number(cfg, "trainer.base_batch_size", None, 1, kind=int)
    scaling = get(cfg, "trainer.lr_scaling", "none") or "none"
    if scaling not in LR_SCALINGS:
        raise UserError(f"trainer.lr_scaling: {scaling!r} is not supported, expected one of {list(LR_SCALINGS)}")
    if scaling == "linear" and base is None:
        raise UserError("trainer.lr_scaling: linear needs trainer.base_batch_size, expected the global batch the "
                        "lr was tuned for (e.g. 16 for the published 8-GPU configs)")
    return GlobalBatch(batch_size, world_size, accumulation, base, scaling)


def _whole_updates(iterations, accumulation):
    """Micro-batches per epoch, rounded down to whole updates (the rest is dropped, like a last partial batch)."""
    if iterations < accumulation:
        raise UserError(f"trainer.grad_accumulation: {accumulation} exceeds the {iterations} iterations of an epoch, "
                        f"expected at most {iterations}")
    return iterations // accumulation * accumulation


def plan_from_config(cfg, world_size=1):
    """The TrainPlan of `cfg`: every key the training reads is validated here, once, before anything is built or
    written (a UserError names the key, its value and what was expected)."""
    epochs = _number(cfg, "trainer.epochs", None, 1, kind=int)
    sup_only_epoch = _number(cfg, "trainer.sup_only_epoch", 1, 0, kind=int)
    semi = isinstance(get(cfg, "trainer.unsupervised"), dict) and sup_only_epoch < epochs
    use_proto = semi and isinstance(get(cfg, "net.proto_head"), dict)
    batch_size = _number(cfg, "dataset.batch_size", None, 1, kind=int)
    if semi and batch_size < 2:
        raise UserError("dataset.batch_size: 1 is too small for CutMix and BatchNorm, expected at least 2")
    batch = global_batch(cfg, batch_size, world_size)
    data = train_data(cfg)
    eval_on = bool(get(cfg, "trainer.eval_on", True)) and bool(get(cfg, "dataset.val"))
    plan = TrainPlan(  # checked in this order: the first error met is the one reported
        epochs=epochs, sup_only_epoch=min(sup_only_epoch, epochs), semi=semi, batch_size=batch_size,
        crop=data.crop, use_proto=use_proto, granularity=_granularity(data, use_proto),
        losses=loss_settings(cfg), optimizer=optimizer_settings(cfg),
        ema_decay=_number(cfg, "net.ema_decay", 0.99, 0.0, 1.0),
        drop_percent=_number(cfg, "trainer.unsupervised.drop_percent", 100, 0.0, 100.0),
        cutmix=semi and _cutmix(cfg),
        oracle_rows=_oracle(cfg, batch_size) if semi else 0,
        log_interval=_number(cfg, "trainer.log_interval", DEFAULT_LOG_INTERVAL, 1, kind=int),
        save_interval=_number(cfg, "trainer.save_interval", 0, 0, kind=int),
        save_epoch_interval=_number(cfg, "trainer.save_epoch_interval", 1, 1, kind=int),
        eval_on=eval_on,
        iterations=_whole_updates(iterations_per_epoch(data, batch_size, world_size, semi), batch.accumulation),
        batch=batch,  # batch_size is per device
        data=data, val_crop=build_transform(data.section, "val").crop_size if eval_on else None,
        proto=proto_settings(cfg) if use_proto else None, batch_norm=batch_norm_settings(cfg),
        auto_resume=bool(get(cfg, "saver.auto_resume", False)), net=net_config(cfg),
        criterion=supervised_criterion(cfg))
    method = method_class(cfg, plan)  # from the plan (semi, use_proto) and trainer.prototype
    return replace(plan, method=method, method_settings=method.settings_from_config(cfg, plan))


def val_dataset(data, data_root=None):
    """Reader of dataset.val of the TrainData `data` (paths relative to the config; data_root overrides its
    data_root)."""
    return build_dataset(data.section, "val", num_classes=data.num_classes,
                         data_root_override=data_root or data.val_root, list_override=data.val_list)


def check_data(plan, data_root=None):
    """Every listed training (and validation) file exists: fail before any output is written."""
    train_readers(plan.data, plan.semi, data_root)
    if plan.eval_on:
        val_dataset(plan.data, data_root)


def pretrained_path(args, cfg):
    """--pretrained, else `saver.pretrain` (relative to the config's folder), checked to exist; None when neither."""
    if args.pretrained:
        path = os.path.abspath(args.pretrained)
    else:  # upstream field, relative to the config's folder
        path = resolve_path(cfg, get(cfg, "saver.pretrain") or None)
    if path and not os.path.isfile(path):
        raise UserError(f"{path}: pretrained checkpoint not found, expected a .ckpt (convert pth2ckpt output)")
    return path
