"""BRPG's prototype loss L_pro (brpg.md section 5): graph-compilable, fixed shapes.

L_pro = CE(s_L / tau, y_L) + CE(s_U / tau, y_U), two means, where s[n, c] = max over the valid prototypes m of
class c of cos(f_n, P[c, m]). Labeled samples: the student `rep` at a (G+1) x (G+1) grid of the full-resolution
image (bilinear, align_corners=True, as upstream's upsample-then-index); unlabeled samples: a random subset of at
most `count` pixels whose mixed teacher confidence reaches the ramped threshold, chosen by the smallest host-drawn
noise (upstream: shuffle and truncate), ignored (255) when fewer pixels qualify. Differences from upstream, on
purpose: a CE over no pixels is 0 instead of NaN, and pixels of a class without any prototype are ignored.
"""
import numpy as np
from mindspore import ops
import mindspore as ms

from ms_semiseg.losses.ohem import IGNORE_INDEX, cross_entropy
from ms_semiseg.models.layers import bilinear_at, l2_normalize, points_of_every_image

_NO_PROTOTYPE = -2.0  # below any cosine: a masked slot never wins the max
_NOT_CONFIDENT = 2.0  # above any uniform noise


# ------------------------------------------------------------------------------------------------ host side


def grid_positions(size, grid_num):
    """Upstream's grid along one axis: [i * ((size - 1) // G) for i < G] + [size - 1], without repeats (upstream
    indexes with a boolean mask, so a repeated position counts once)."""
    step = (size - 1) // grid_num
    return np.unique(np.array([i * step for i in range(grid_num)] + [size - 1], np.int32))


def grid_coords(height, width, grid_num):
    """int32 (n, 2) (row, col) of the labeled grid in row-major order. Upstream uses the row list for both axes
    (it assumes square crops); this takes each axis's own size, identical when height == width."""
    rows, cols = grid_positions(height, grid_num), grid_positions(width, grid_num)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.int32)


def pseudo_threshold_at(iteration, iters_per_epoch, epochs, start, end, ramp_start_epoch):
    """Upstream's ramp: start + (end - start) * (i - S*L) / ((E - S) * L), with S the ramp start epoch (upstream
    hard-codes 5), i the global iteration, L iterations per epoch; below `start` before epoch S, as upstream."""
    offset = ramp_start_epoch * iters_per_epoch
    return start + (end - start) * (iteration - offset) / ((epochs - ramp_start_epoch) * iters_per_epoch)


# ------------------------------------------------------------------------------------------------ sampling


def grid_samples(rep_l, label_l, coords):
    """Labeled samples: features (B*n, D) at grid `coords` int32 (n, 2) of the label frame, and their GT (255 kept)."""
    batch, height, width = label_l.shape
    images, rows, cols = points_of_every_image(batch, coords)
    feats = bilinear_at(rep_l, images, rows, cols, (height, width))
    target = ops.gather(label_l.reshape(-1), images * (height * width) + rows * width + cols, 0)
    return feats, target


def confident_samples(rep_u, pseudo_u, conf_u, noise_u, threshold, count):
    """Unlabeled samples: features (k, D) and pseudo-labels (k,) of a random subset of the pixels with conf_u >=
    threshold, k = min(count, B*H*W); entries beyond the number of confident pixels get target 255.

    pseudo_u, conf_u, noise_u (B, H, W) at full resolution (already CutMix-mixed); threshold a float32 scalar."""
    batch, height, width = conf_u.shape
    confident = conf_u.reshape(-1) >= threshold
    keys = ops.where(confident, noise_u.reshape(-1), ops.full_like(noise_u.reshape(-1), _NOT_CONFIDENT))
    values, index = ops.topk(-keys, min(count, keys.shape[0]))
    index = index.astype(ms.int32)
    chosen = values > -_NOT_CONFIDENT
    pixels = height * width
    feats = bilinear_at(rep_u, index // pixels, (index % pixels) // width, index % width, (height, width))
    target = ops.gather(pseudo_u.reshape(-1), index, 0).astype(ms.int32)
    return feats, ops.where(chosen, target, ops.full_like(target, IGNORE_INDEX))


# ------------------------------------------------------------------------------------------------ the loss


def masked_class_scores(feats, protos, valid):
    """(s (N, C) = max over valid m of cos(f, P[c, m]), index (N, C) int32 of the winning slot).

    protos (C, M, D) raw (normalised here), valid (C, M) float 0/1. Classes with no valid slot score -2."""
    num_classes, slots, dim = protos.shape
    sim = ops.matmul(l2_normalize(feats, 1), l2_normalize(protos.reshape(-1, dim), 1).T)
    sim = sim.reshape(-1, num_classes, slots)
    sim = ops.where(valid.reshape(1, num_classes, slots) > 0.5, sim, ops.full_like(sim, _NO_PROTOTYPE))
    index, value = ops.ArgMaxWithValue(axis=2)(sim)
    return value, index.astype(ms.int32)


def targets_with_prototypes(target, valid):
    """target with 255 where the class has no valid prototype (such pixels cannot be classified)."""
    available = valid.max(axis=1) > 0.5
    safe = ops.where(target == IGNORE_INDEX, ops.zeros_like(target), target)
    has_proto = ops.gather(available, safe, 0)
    return ops.where(has_proto, target, ops.full_like(target, IGNORE_INDEX))


def prototype_loss(scores, target, num_labeled, tau):
    """CE(s_L / tau, y_L) + CE(s_U / tau, y_U): rows [0, num_labeled) labeled, the rest unlabeled; each mean is over
    its non-ignored rows (0 when none)."""
    logits = scores / tau
    return (cross_entropy(logits[:num_labeled], target[:num_labeled])
            + cross_entropy(logits[num_labeled:], target[num_labeled:]))
