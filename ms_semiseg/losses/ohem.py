"""Supervised losses: masked cross-entropy primitives, U2PL's OHEM and the config-driven criterion.

Everything here is graph-compilable (called inside one `ms.jit` training step): shapes stay fixed, pixels are
dropped with masks instead of boolean indexing, and run-time decisions use `ops.where`, never a Python `if` on a
tensor value. Means over an empty set of pixels are 0, not NaN (torch would give NaN there).
"""

from mindspore import ops
import mindspore as ms

from ms_semiseg.errors import UserError

IGNORE_INDEX = 255
_OHEM_DEFAULTS = {"thresh": 0.7, "min_kept": 100000}  # U2PL CriterionOhem defaults


def class_last(logits):
    """(B,C,H,W) or (N,C) logits -> (M,C), rows in the order of `target.reshape(-1)`."""
    if logits.ndim == 4:
        logits = ops.transpose(logits, (0, 2, 3, 1))
    return logits.reshape(-1, logits.shape[-1])


def valid_and_safe_target(target, ignore_index=IGNORE_INDEX):
    """Flattened (valid mask, target with ignored entries replaced by class 0 so that gathers stay in range)."""
    flat = target.reshape(-1)
    valid = flat != ignore_index
    return valid, ops.where(valid, flat, ops.zeros_like(flat))


def gather_class(per_class, safe_target):
    """Pick column `safe_target[i]` of row i of an (M,C) tensor -> (M,)."""
    return ops.gather_elements(per_class, 1, safe_target.reshape(-1, 1)).reshape(-1)


def pixel_nll(logits, safe_target):
    """Per-pixel cross-entropy -log softmax(logits)[target], flattened to (M,)."""
    log_probs = ops.log_softmax(class_last(logits), axis=-1)
    return -gather_class(log_probs, safe_target)


def masked_mean(values, mask):
    """Mean of `values` where `mask` holds; 0 when the mask is empty."""
    weights = mask.astype(values.dtype)
    count = weights.sum()
    return (values * weights).sum() / ops.maximum(count, ops.ones_like(count))


def cross_entropy(logits, target, ignore_index=IGNORE_INDEX):
    """Mean cross-entropy over non-ignored pixels (0 when none); logits (B,C,H,W) or (N,C)."""
    valid, safe_target = valid_and_safe_target(target, ignore_index)
    return masked_mean(pixel_nll(logits, safe_target), valid)


def _ohem_keep_mask(logits, valid, safe_target, thresh, min_kept):
    """U2PL's hard-pixel selection; returns the mask of pixels that enter the mean."""
    num_pixels = valid.shape[0]
    probs = ops.stop_gradient(ops.softmax(class_last(logits), axis=-1))
    target_prob = ops.where(valid, gather_class(probs, safe_target), ops.ones_like(valid, dtype=probs.dtype))
    sorted_prob, _ = ops.sort(target_prob)
    kth_smallest = sorted_prob[min(num_pixels, min_kept) - 1]
    threshold = ops.maximum(kth_smallest, ops.full_like(kth_smallest, thresh))
    hard = ops.logical_and(valid, target_prob <= threshold)
    # U2PL skips the selection when min_kept > #valid; #valid is only known at run time, so select here
    too_few_valid = valid.astype(ms.int32).sum() < min_kept
    return ops.where(too_few_valid, valid, hard)


def ohem_cross_entropy(logits, target, thresh=0.7, min_kept=100000, ignore_index=IGNORE_INDEX):
    """U2PL `OhemCrossEntropy2dTensor` (spec B.7) on (B,C,H,W) logits and (B,H,W) int targets -> scalar.

    Plain mean CE over valid pixels when min_kept > #valid; otherwise q = softmax prob of the target class (1 at
    ignored pixels), threshold = max(thresh, k-th smallest q with k = min(#pixels, min_kept)), and the mean CE is
    taken over the valid pixels with q <= threshold. min_kept <= 0 disables the selection, as in U2PL. An all-ignored
    target gives 0.
    """
    valid, safe_target = valid_and_safe_target(target, ignore_index)
    keep = valid if min_kept <= 0 else _ohem_keep_mask(logits, valid, safe_target, thresh, min_kept)
    return masked_mean(pixel_nll(logits, safe_target), keep)


def _criterion_kwargs(kwargs, allowed, section="criterion"):
    """Check the `<section>.kwargs` keys against `allowed` (a dict of defaults) and fill in the defaults."""
    kwargs = dict(kwargs or {})
    for key in kwargs:
        if key not in allowed:
            raise UserError(f"{section}.kwargs.{key}: unknown option, expected one of {sorted(allowed) or 'none'}")
    return {**allowed, **kwargs}


def _check_ohem_kwargs(thresh, min_kept, section="criterion"):
    if isinstance(thresh, bool) or not isinstance(thresh, (int, float)) or not 0.0 <= thresh <= 1.0:
        raise UserError(f"{section}.kwargs.thresh: {thresh!r} is invalid, expected a number in [0, 1]")
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0:
        raise UserError(f"{section}.kwargs.min_kept: {min_kept!r} is invalid, expected an integer >= 0")


def _criterion_weight(criterion_cfg, section):
    weight = criterion_cfg.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise UserError(f"{section}.weight: {weight!r} is invalid, expected a number >= 0")
    return float(weight)


def _unweighted_criterion(criterion_cfg, ignore_index, section):
    loss_type = criterion_cfg.get("type")
    if loss_type == "ohem":
        options = _criterion_kwargs(criterion_cfg.get("kwargs"), _OHEM_DEFAULTS, section)
        thresh, min_kept = options["thresh"], options["min_kept"]
        _check_ohem_kwargs(thresh, min_kept, section)

        def criterion(logits, target):
            return ohem_cross_entropy(logits, target, thresh, min_kept, ignore_index)

        return criterion
    if loss_type == "CELoss":
        _criterion_kwargs(criterion_cfg.get("kwargs"), {}, section)

        def criterion(logits, target):
            return cross_entropy(logits, target, ignore_index)

        return criterion
    raise UserError(f"{section}.type: {loss_type!r} is not supported, expected 'ohem' or 'CELoss'")


def build_criterion(criterion_cfg, ignore_index=IGNORE_INDEX, section="criterion"):
    """Callable `(logits, target) -> scalar` from an upstream criterion section (`type: ohem` or `CELoss`), times
    the section's `weight` when it has one (BRPG's schema; default 1). `section` names it in error messages."""
    criterion_cfg = criterion_cfg or {}
    criterion = _unweighted_criterion(criterion_cfg, ignore_index, section)
    weight = _criterion_weight(criterion_cfg, section)
    if weight == 1.0:
        return criterion

    def weighted(logits, target):
        return weight * criterion(logits, target)

    return weighted


SECOND_CRITERION = "criterion_2"


def supervised_criterion(cfg, ignore_index=IGNORE_INDEX):
    """The config's supervised criterion: `criterion` plus, when the config has one, BRPG's `criterion_2`
    section, each times its `weight`. BRPG trains with 0.5 * CE + 0.5 * OHEM this way; with an auxiliary head,
    each criterion also scores the aux logits (upstream passes [pred, aux] to both), which `supervised_loss`
    reproduces because the sum is linear."""
    first = build_criterion(cfg.get("criterion"), ignore_index)
    if cfg.get(SECOND_CRITERION) is None:
        return first
    second = build_criterion(cfg[SECOND_CRITERION], ignore_index, section=SECOND_CRITERION)

    def criterion(logits, target):
        return first(logits, target) + second(logits, target)

    return criterion


def upsample_to(logits, size):
    """Bilinear, align_corners=True resize of NCHW logits to `size` (H, W), as U2PL does before its losses."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return ops.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def supervised_loss(criterion, pred, target, aux=None, aux_weight=0.4):
    """criterion(pred upsampled to target's (H,W)) [+ aux_weight * criterion(aux upsampled)]: each head its own OHEM."""
    size = target.shape[-2:]
    loss = criterion(upsample_to(pred, size), target)
    if aux is not None:
        loss = loss + aux_weight * criterion(upsample_to(aux, size), target)
    return loss
