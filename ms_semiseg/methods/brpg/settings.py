"""BRPG's `trainer.prototype` section: the upstream keys (brpg.md section 6) plus our quirk decisions (docs/brpg.md).

Every key has the published value as its default, except where the issue asks for a fix of a bug (loss weight
not divided by the device count, device-synchronised prototype EMA, a fallback instead of a k-means crash).
Unknown keys are errors, so a typo cannot silently fall back to a default.
"""
from dataclasses import dataclass, fields

from ...config import check, get, is_number
from ...errors import UserError

SECTION = "trainer.prototype"
FIX, CSP = "fix", "csp"
CLUSTER, PROB = "cluster", "prob"
DISPERSION_METRICS = ("cos_sim", "l2", "l2_norm")
FALLBACK, ERROR = "fallback", "error"


def brpg_enabled(cfg):
    """True when the config asks for BRPG's prototype loss (a `trainer.prototype` section)."""
    return isinstance(get(cfg, SECTION), dict)


@dataclass(frozen=True)
class BRPGSettings:
    # sampling window and CPG (section 2)
    sample_delay: int = 1
    sample_last: int = 1
    sample_pixel_num: int = 5000
    threshold_type: str = FIX
    high_threshold: float = 0.8
    low_threshold: float = 0.0
    init_prob: float = 0.8
    thre_min: float = None
    thre_max: float = None
    fix_class: tuple = ()
    thre_update: float = 0.999
    class_balance_sample: bool = False
    gamma: float = 0.5
    queue_len: int = 30000
    # clustering and APO (sections 3-4)
    high_prototype_num: int = 2
    low_prototype_num: int = 2
    proto_add: bool = True
    intra_var_eval: str = "cos_sim"
    add_num: int = 1
    add_proportion: float = 0.05
    type: str = CLUSTER
    kmeans_random_state: int = 0
    too_few_samples: str = FALLBACK
    # loss and EMA (section 5)
    cosine_tao: float = 0.1
    sup_sample: str = "grid"
    grid_num: int = 32
    unsup_sample: str = "random"
    unsup_sample_num: int = 1000
    pseudo_threshold: float = 0.8
    pseudo_threshold_end: float = 0.95
    pseudo_ramp_start_epoch: int = 5
    loss_weight: float = 1.0
    divide_loss_by_world_size: bool = False
    contrastive: bool = False
    prototype_ema_decay: float = 0.99
    sync_prototype_ema: bool = True
    fault_weight: float = 1.0
    fault_weight_boolean: bool = True

    # ---------------------------------------------------------------------------------------------- derived

    @property
    def sampling_end(self):
        """First epoch after the sampling window: clustering happens at its step 0 and L_pro starts."""
        return self.sample_delay + self.sample_last

    @property
    def max_high(self):
        return self.high_prototype_num + (self.add_num if self.proto_add else 0)

    @property
    def max_low(self):
        return self.low_prototype_num + (self.add_num if self.proto_add else 0)

    @property
    def slots(self):
        """Prototype slots per class: [0, max_high) high, [max_high, max_high + max_low) low."""
        return self.max_high + self.max_low

    @property
    def ramp_start_epoch(self):
        return self.sampling_end if self.pseudo_ramp_start_epoch is None else self.pseudo_ramp_start_epoch

    @property
    def effective_fault_weight(self):
        """Weight of prototype-misclassified pixels in the EMA mean. Upstream stores it in a bool tensor, so
        any non-zero value acts as 1 (fault_weight_boolean: True reproduces that)."""
        if self.fault_weight_boolean:
            return 1.0 if self.fault_weight != 0 else 0.0
        return float(self.fault_weight)

    def loss_scale(self, world_size=1):
        """lambda_pro. Upstream's all_reduce(L)/W trains with lambda/W (all_reduce is not autograd-aware)."""
        return self.loss_weight / world_size if self.divide_loss_by_world_size else self.loss_weight

    @classmethod
    def from_config(cls, cfg, num_classes):
        section = get(cfg, SECTION)
        if not isinstance(section, dict):
            raise UserError(f"{SECTION}: missing or not a mapping, expected BRPG's prototype settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise UserError(f"{SECTION}.{unknown[0]}: unknown key, expected one of {sorted(known)}")
        values = {name: _check(name, section[name]) for name in section}
        if "fix_class" in values:
            values["fix_class"] = tuple(values["fix_class"])
        settings = cls(**values)
        settings.validate(cfg, num_classes)
        return settings

    def validate(self, cfg, num_classes):
        if self.threshold_type == CSP and (self.thre_min is None or self.thre_max is None):
            raise UserError(f"{SECTION}.thre_min/thre_max: required by threshold_type csp, expected numbers in [0, 1]")
        if self.threshold_type == CSP and self.thre_min > self.thre_max:
            raise UserError(f"{SECTION}.thre_min={self.thre_min}: above thre_max={self.thre_max}, expected min <= max")
        bad_class = [c for c in self.fix_class if not 0 <= c < num_classes]
        if bad_class:
            raise UserError(f"{SECTION}.fix_class: {bad_class} out of range, expected class ids in [0, {num_classes})")
        sup_only = get(cfg, "trainer.sup_only_epoch", 1)
        if self.sample_delay < sup_only:
            raise UserError(f"{SECTION}.sample_delay={self.sample_delay}: sampling during the supervised warm-up is "
                            f"not supported, expected >= trainer.sup_only_epoch ({sup_only})")
        epochs = get(cfg, "trainer.epochs")
        if isinstance(epochs, int) and self.sampling_end < epochs and self.ramp_start_epoch >= epochs:
            raise UserError(f"{SECTION}.pseudo_ramp_start_epoch={self.ramp_start_epoch}: the threshold ramp divides "
                            f"by epochs - start, expected < trainer.epochs ({epochs})")
        if get(cfg, "net.proto_head") is not None:
            raise UserError(f"{SECTION}: set together with net.proto_head, expected one of BRPG's prototype loss "
                            "(trainer.prototype) or PCR's prototype head (net.proto_head)")
        if get(cfg, "net.decoder.kwargs.rep_head", True) is not True:
            raise UserError("net.decoder.kwargs.rep_head: BRPG samples the 256-d representation head, expected True")


def _prob(value):
    return is_number(value) and 0.0 <= value <= 1.0


def _choice(*options):
    return (lambda value: value in options), f"one of {list(options)}"


_INT_POS = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1), "an integer >= 1"
_INT_NONNEG = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0), "an integer >= 0"
_PROB = _prob, "a number in [0, 1]"
_POSITIVE = (lambda v: is_number(v) and v > 0), "a number > 0"
_NONNEG = (lambda v: is_number(v) and v >= 0), "a number >= 0"
_BOOL = (lambda v: isinstance(v, bool)), "true or false"
_NULLABLE_PROB = (lambda v: v is None or _prob(v)), "null or a number in [0, 1]"

_CHECKS = {
    "sample_delay": _INT_NONNEG, "sample_last": _INT_POS, "sample_pixel_num": _INT_POS,
    "threshold_type": _choice(FIX, CSP), "high_threshold": _PROB, "low_threshold": _PROB, "init_prob": _PROB,
    "thre_min": _NULLABLE_PROB, "thre_max": _NULLABLE_PROB, "thre_update": _PROB,
    "fix_class": ((lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, int) for c in v)),
                  "a list of class ids"),
    "class_balance_sample": _BOOL, "gamma": _NONNEG, "queue_len": _INT_POS,
    "high_prototype_num": _INT_POS, "low_prototype_num": _INT_POS, "proto_add": _BOOL,
    "intra_var_eval": _choice(*DISPERSION_METRICS), "add_num": _INT_NONNEG, "add_proportion": _PROB,
    "type": ((lambda v: v in (CLUSTER, PROB)),
             "'cluster' or 'prob' ('random' is broken upstream and not ported)"),
    "kmeans_random_state": _INT_NONNEG, "too_few_samples": _choice(FALLBACK, ERROR),
    "cosine_tao": _POSITIVE,
    "sup_sample": ((lambda v: v == "grid"), "'grid' ('random' is not implemented upstream)"),
    "grid_num": _INT_POS,
    "unsup_sample": ((lambda v: v == "random"), "'random' (the only unlabeled sampling upstream has)"),
    "unsup_sample_num": _INT_POS, "pseudo_threshold": _PROB, "pseudo_threshold_end": _PROB,
    "pseudo_ramp_start_epoch": ((lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)),
                                "null (= sample_delay + sample_last) or an integer >= 0"),
    "loss_weight": _NONNEG, "divide_loss_by_world_size": _BOOL,
    "contrastive": ((lambda v: v is False), "false (the U2PL-contrastive variant is not ported)"),
    "prototype_ema_decay": _PROB, "sync_prototype_ema": _BOOL, "fault_weight": _NONNEG,
    "fault_weight_boolean": _BOOL,
}


def _check(name, value):
    predicate, expected = _CHECKS[name]
    return check(f"{SECTION}.{name}", value, predicate(value), expected)
