"""SGD exactly as U2PL's PyTorch setup (spec B.2): two parameter groups, weight decay on every parameter, poly LR.

MindSpore differences handled here:
- ungrouped optimizers skip weight decay on parameters named gamma/beta (BatchNorm); torch decays them too, so
  every group sets `weight_decay` explicitly;
- a changing learning rate must live in the graph: each group gets the whole run's per-iteration LR list, indexed
  by the optimizer's `global_step` (restored on resume, so a resumed run continues the schedule);
- nn.SGD applies weight decay as two extra kernels per parameter (Mul, AddN) before its SGD kernel, whose own
  weight_decay it leaves at 0; `fuse_weight_decay` moves the decay into the SGD kernel (same bits, measured:
  docs/performance_profile.md), a third of the optimizer's kernel launches and memory passes.
"""
from dataclasses import dataclass

from mindspore import nn
from mindspore import ops

from ..config import check, get, is_number
from ..errors import UserError

ENCODER_PREFIX = "encoder."
DECODER_LR_TIMES_PASCAL = 10  # U2PL: `times = 10 if "pascal" in cfg["dataset"]["type"] else 1`


def poly_lr_at(base_lr, step, total_steps, power=0.9):
    """lr of iteration `step` = base * (1 - step / total)^power (set before the update, as U2PL)."""
    return base_lr * (1.0 - step / total_steps) ** power


def poly_lr(base_lr, total_steps, power=0.9):
    """The per-iteration list for iterations 0..total-1."""
    return [poly_lr_at(base_lr, step, total_steps, power) for step in range(total_steps)]


def decoder_lr_times(cfg):
    """U2PL's rule (10x on VOC, 1x on Cityscapes), unless `trainer.decoder_lr_times` says otherwise: the 10x protects
    an ImageNet backbone; a backbone trained from scratch (the CPU demo) learns as fast as the decoder."""
    times = get(cfg, "trainer.decoder_lr_times")
    if times is None:
        return DECODER_LR_TIMES_PASCAL if "pascal" in str(get(cfg, "dataset.type", "")) else 1
    check("trainer.decoder_lr_times", times, is_number(times) and times > 0,
          "a positive number (the decoder's lr / the encoder's; default 10 for pascal datasets, 1 otherwise)")
    return float(times)


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer and LR schedule of a run, validated once at start-up (`optimizer_settings`)."""
    lr: float  # the config's base lr (before trainer.lr_scaling)
    momentum: float
    weight_decay: float
    power: float  # of the poly schedule
    decoder_lr_times: float  # the decoder's lr / the encoder's

    def lrs_at(self, update, total_updates, lr_scale=1.0):
        """(encoder lr, decoder lr) of optimizer update `update` (what the graph's LR lists hold)."""
        return tuple(poly_lr_at(self.lr * lr_scale * times, update, total_updates, self.power)
                     for times in (1, self.decoder_lr_times))


def optimizer_settings(cfg):
    """OptimizerSettings from `trainer.optimizer`, `trainer.lr_scheduler` and `trainer.decoder_lr_times`."""
    opt_type = get(cfg, "trainer.optimizer.type", "SGD")
    if opt_type != "SGD":
        raise UserError(f"trainer.optimizer.type: {opt_type!r} is not supported, expected 'SGD'")
    kwargs = get(cfg, "trainer.optimizer.kwargs") or {}
    unknown = sorted(set(kwargs) - {"lr", "momentum", "weight_decay"})
    if unknown:
        raise UserError(f"trainer.optimizer.kwargs: unknown key(s) {unknown}, expected lr, momentum, weight_decay")
    if "lr" not in kwargs:
        raise UserError("trainer.optimizer.kwargs.lr: missing, expected the base learning rate, e.g. 0.001")
    mode = get(cfg, "trainer.lr_scheduler.mode", "poly")
    if mode != "poly":
        raise UserError(f"trainer.lr_scheduler.mode: {mode!r} is not supported, expected 'poly'")
    power = (get(cfg, "trainer.lr_scheduler.kwargs") or {}).get("power", 0.9)
    values = {"lr": kwargs["lr"], "momentum": kwargs.get("momentum", 0.9),
              "weight_decay": kwargs.get("weight_decay", 0.0), "power": power}
    for key, value in values.items():
        check(f"trainer.optimizer.kwargs.{key}", value, is_number(value) and value >= 0, "a number >= 0")
    return OptimizerSettings(float(values["lr"]), float(values["momentum"]), float(values["weight_decay"]),
                             float(values["power"]), decoder_lr_times(cfg))


def split_encoder_decoder(params, model_prefix=""):
    """Trainable parameters -> (encoder ones, the rest: decoder, aux head). `model_prefix` is e.g. 'student.'."""
    encoder, rest = [], []
    for param in params:
        (encoder if param.name.startswith(model_prefix + ENCODER_PREFIX) else rest).append(param)
    return encoder, rest


def build_sgd(params, base_lr, total_steps, momentum=0.9, weight_decay=0.0, power=0.9, decoder_times=1,
              model_prefix=""):
    """nn.SGD over the trainable `params`: encoder at base_lr, the rest at base_lr * decoder_times, both with
    `weight_decay` and the poly schedule of `total_steps` iterations. Non-trainable parameters (BN statistics,
    the prototype bank, dropout masks) are left out."""
    trainable = [p for p in params if p.requires_grad]
    encoder, rest = split_encoder_decoder(trainable, model_prefix)
    groups = []
    for group_params, times in ((encoder, 1), (rest, decoder_times)):
        if group_params:
            groups.append({"params": group_params, "weight_decay": weight_decay,
                           "lr": poly_lr(base_lr * times, total_steps, power)})
    return fuse_weight_decay(nn.SGD(groups, learning_rate=base_lr, momentum=momentum, weight_decay=weight_decay))


def fuse_weight_decay(optimizer):
    """nn.SGD computes `grad + wd * param` with a Mul and an AddN per parameter, then runs its SGD kernel with
    weight_decay 0. When every parameter decays with one value, this gives the SGD kernels that weight_decay and
    turns nn.SGD's own decay off: the kernel computes the same `grad + wd * param` (bit-identical, tested), and each
    step launches 2 kernels fewer per parameter. Anything else (per-group values, undecayed parameters,
    dampening/nesterov, which nn.SGD keeps in its kernels) is returned unchanged."""
    if not optimizer.exec_weight_decay or not all(optimizer.decay_flags):
        return optimizer
    decays = set(getattr(optimizer, "group_weight_decay", None) or [optimizer.weight_decay])
    if len(decays) != 1 or optimizer.dynamic_weight_decay or optimizer.loss_scale != 1.0:
        return optimizer
    decay = float(decays.pop())
    first = optimizer.opt[0]
    dampening, nesterov = first.dampening, first.nesterov
    optimizer.opt = tuple(ops.SGD(dampening, decay, nesterov) for _ in optimizer.opt)
    optimizer.exec_weight_decay = False
    return optimizer


def build_optimizer(settings, params, total_steps, model_prefix="", lr_scale=1.0):
    """`settings`: OptimizerSettings; `total_steps` optimizer updates; `lr_scale` multiplies the config's lr
    (trainer.lr_scaling)."""
    return build_sgd(params, settings.lr * lr_scale, total_steps, settings.momentum, settings.weight_decay,
                     settings.power, settings.decoder_lr_times, model_prefix)


def optimizer_state(optimizer):
    """The optimizer's state tensors by name: momentum buffers and the global step (which indexes the LR lists)."""
    state = {"global_step": optimizer.global_step}
    state.update({param.name: param for param in optimizer.accum})
    return state


def optimizer_flags(optimizer):
    """nn.SGD's first-step flags (`stat.*`, 1 until a parameter's first update, then 0): one value per tensor,
    so a checkpoint stores a scalar for each instead of a parameter-sized copy."""
    return {param.name: param for param in optimizer.stat}
