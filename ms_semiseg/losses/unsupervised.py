"""Unsupervised losses on the (mixed) unlabeled batch: U2PL entropy dropping, and a FixMatch-style confidence mask.

Spec C.6.1 leaves open which one PCR's L_u uses; the trainer switches between them (default: entropy dropping).
Both are graph-compilable: the percentile is a fixed-shape sort plus gathers, never a variable-length selection.
"""

import numpy as np
from mindspore import ops, Tensor
import mindspore as ms

from ms_semiseg.losses.ohem import masked_mean, pixel_nll, valid_and_safe_target

_ENTROPY_EPS = 1e-10  # U2PL: -sum p * log(p + 1e-10)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def drop_percent_schedule(drop_percent, epoch, epochs):
    """U2PL's per-epoch percentile of entropy kept: 100 - (100 - drop_percent) * (1 - epoch / epochs).

    Computed on the host once per epoch; pass it to the compiled step as a scalar tensor so that a new value does
    not trigger a recompilation.
    """
    return 100.0 - (100.0 - drop_percent) * (1.0 - epoch / epochs)


def _as_float64(value):
    if isinstance(value, Tensor):
        return value.astype(ms.float64)
    return Tensor(value, ms.float64)


def _lerp(low, high, weight):
    """numpy's `_lerp`: a + (b-a)t below t=0.5, b - (b-a)(1-t) from 0.5 on (keeps np.percentile's exact value)."""
    diff = high - low
    return ops.where(weight >= 0.5, high - diff * (1.0 - weight), low + diff * weight)


def masked_percentile(values, mask, percent):
    """`np.percentile(values[mask], percent)` (linear method) with fixed shapes; a huge finite value when mask is empty.

    Masked-out entries are pushed to the end of the sort, so ranks 0..n-1 of the sorted array are the kept values.
    Ranks and the interpolation run in float64 like numpy, then the result is rounded to float32 (as torch does
    when comparing a float32 tensor with the numpy scalar).
    """
    flat_values, flat_mask = values.reshape(-1), mask.reshape(-1)
    sorted_values, _ = ops.sort(ops.where(flat_mask, flat_values, ops.full_like(flat_values, _FLOAT32_MAX)))
    count = flat_mask.astype(ms.float64).sum()
    rank = ops.maximum(count - 1.0, ops.zeros_like(count)) * _as_float64(percent) / 100.0
    low_rank = ops.floor(rank)
    high_rank = ops.minimum(low_rank + 1.0, ops.maximum(count - 1.0, ops.zeros_like(count)))
    low = ops.gather(sorted_values, low_rank.astype(ms.int32).reshape(1), 0).astype(ms.float64)
    high = ops.gather(sorted_values, high_rank.astype(ms.int32).reshape(1), 0).astype(ms.float64)
    return _lerp(low, high, rank - low_rank).astype(ms.float32).reshape(())


def prediction_entropy(logits):
    """Per-pixel entropy -sum_c p log(p + 1e-10) of softmax(logits) over axis 1 -> (B,H,W)."""
    probs = ops.softmax(logits, axis=1)
    return -(probs * ops.log(probs + _ENTROPY_EPS)).sum(axis=1)


def entropy_drop_unsup_loss(student_logits, teacher_logits, pseudo_label, percent):
    """U2PL `compute_unsupervised_loss` (spec B.6 step 6); all logits (B,C,H,W) already at the label size.

    Pixels whose teacher entropy is >= the `percent`-th percentile (over pixels with a pseudo-label) are dropped,
    then loss = (B*H*W / #kept) * mean CE over the kept pixels: U2PL's intentional rescaling. `percent` is a python
    float or a scalar tensor (see `drop_percent_schedule`). No kept pixel -> 0.
    """
    entropy = prediction_entropy(ops.stop_gradient(teacher_logits))
    valid, safe_target = valid_and_safe_target(pseudo_label)
    entropy = entropy.reshape(-1)
    threshold = masked_percentile(entropy, valid, percent)
    kept = ops.logical_and(valid, entropy < threshold)
    num_kept = kept.astype(ms.float32).sum()
    rescale = float(valid.shape[0]) / ops.maximum(num_kept, ops.ones_like(num_kept))
    return rescale * masked_mean(pixel_nll(student_logits, safe_target), kept)


def confidence_unsup_loss(student_logits, pseudo_label, confidence, thresh):
    """FixMatch-style L_u: CE against the pseudo-label over pixels with confidence >= thresh (and label != 255).

    Decision: the mean is over the *kept* pixels, i.e. plain CE after setting low-confidence pixels to 255 (the same
    normalisation as the prototype loss, spec C.3). UniMatch divides by all non-ignored pixels instead. 0 when no
    pixel is kept.
    """
    valid, safe_target = valid_and_safe_target(pseudo_label)
    kept = ops.logical_and(valid, confidence.reshape(-1) >= thresh)
    return masked_mean(pixel_nll(student_logits, safe_target), kept)
