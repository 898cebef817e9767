"""Random masks of a training step: drawn on the host from seeded numpy Generators, applied inside the graph.

Every random choice of an iteration (CutMix boxes, the patch-select pixels, dropout masks) comes from its own
stream, `seeds.stream_rng(stream, seed, epoch, iteration)`, so a resumed epoch replays the same randomness, and the
compiled step only sees fixed-shape tensors: CutMix boxes as coordinates, selected pixels as int coordinates (both
step inputs), dropout as keep masks written into the models' mask parameters before the step.
"""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms

from ..models.layers import bilinear_at, points_of_every_image

CUTMIX_PROB = 0.5  # U2PL: `np.random.uniform(0, 1) < 0.5` once per batch


# ------------------------------------------------------------------------------------------------------- CutMix


def cutmix_box(rng, height, width):
    """U2PL `generate_cutmix_mask`: a box of half the image area -> (y0, y1, x0, x1), end-exclusive.

    w ~ randint(W/2 + 1, W) (numpy truncates the float bound, i.e. W//2 + 1 .. W-1), h = round(H*W/2 / w),
    x0 ~ randint(0, W - w + 1), y0 ~ randint(0, H - h + 1)."""
    box_w = int(rng.integers(width // 2 + 1, width))
    box_h = int(np.round(height * width / 2 / box_w))
    x0 = int(rng.integers(0, width - box_w + 1))
    y0 = int(rng.integers(0, height - box_h + 1))
    return y0, y0 + box_h, x0, x0 + box_w


def cutmix_boxes(rng, batch_size, height, width, prob=CUTMIX_PROB):
    """int32 (B, 4) boxes (y0, y1, x0, x1) for the unlabeled batch: with probability `prob` one box per image
    (spec B.5), otherwise empty boxes (all zeros), which leave the batch unmixed."""
    boxes = np.zeros((batch_size, 4), dtype=np.int32)
    if rng.uniform(0.0, 1.0) < prob:
        for index in range(batch_size):
            boxes[index] = cutmix_box(rng, height, width)
    return boxes


def box_keep_mask(boxes, height, width):
    """(B, H, W) float32 mask: 1 outside each image's box, 0 inside (graph function; boxes int32 (B, 4))."""
    rows = ops.arange(0, height, dtype=ms.int32).reshape(1, height, 1)
    cols = ops.arange(0, width, dtype=ms.int32).reshape(1, 1, width)
    y0, y1, x0, x1 = (boxes[:, i].reshape(-1, 1, 1) for i in range(4))
    inside_rows = ops.logical_and(rows >= y0, rows < y1)
    inside_cols = ops.logical_and(cols >= x0, cols < x1)
    return 1.0 - ops.logical_and(inside_rows, inside_cols).astype(ms.float32)


def next_in_batch(x):
    """x[(i + 1) % B] for every i: the image each sample is mixed with."""
    return ops.concat((x[1:], x[:1]), axis=0)


def mix_with_next(x, keep):
    """U2PL cutmix: x_i * M_i + x_{(i+1) % B} * (1 - M_i); `keep` (B, H, W) broadcasts over channels of 4-D x.
    Integer tensors (pseudo-labels) are selected, not blended, so they stay exact."""
    mask = keep if x.ndim == 3 else keep.reshape(keep.shape[0], 1, keep.shape[1], keep.shape[2])
    if x.dtype in (ms.int32, ms.int64):
        return ops.where(mask > 0.5, x, next_in_batch(x))
    return x * mask + next_in_batch(x) * (1.0 - mask)


# ------------------------------------------------------------------------------------------------ patch select


def patch_cells(size, granularity):
    """(start of each patch along one axis, patch side) of spec C.2: side = size // G, so the remainder rows or
    columns are never picked; a side shorter than G gets 1-pixel patches."""
    side = max(size // granularity, 1)
    return np.arange(min(granularity, size), dtype=np.int64) * side, side


def patch_select_coords(rng, size, granularity):
    """int32 (G*G, 2) pixel coordinates (row, col) of spec C.2: one uniformly random pixel in each cell of a
    G x G grid of patch = size // G pixels, patches in row-major order; shared by every image of the batch.
    (PCR's prototype initialisation, `methods/pcr/proto_init.py`, uses the same cells but draws one offset per
    grid row and per grid column, as it always has: changing either draw would change every later number.)"""
    starts, patch = patch_cells(size, granularity)
    offsets = rng.integers(0, patch, size=(starts.size, starts.size, 2))
    rows = starts[:, None] + offsets[..., 0]
    cols = starts[None, :] + offsets[..., 1]
    return np.stack((rows, cols), axis=-1).reshape(-1, 2).astype(np.int32)


def sample_bilinear_align_corners(feat, coords, out_size):
    """Value of `resize(feat, out_size, bilinear, align_corners=True)` at pixel `coords` of every image, without the
    resize: feat (B, D, h, w); coords int32 (N, 2) (row, col) in the out_size frame -> (B, N, D)."""
    batch, dim = feat.shape[0], feat.shape[1]
    feats = bilinear_at(feat, *points_of_every_image(batch, coords), out_size)
    return feats.reshape(batch, coords.shape[0], dim)


def gather_pixels(maps, coords):
    """maps (B, H, W) -> (B, N): the values at pixel coords int32 (N, 2)."""
    batch, height, width = maps.shape
    return ops.gather(maps.reshape(batch, height * width), coords[:, 0] * width + coords[:, 1], 1)


# ------------------------------------------------------------------------------------------------------ dropout


class HostMaskDropout2d(nn.Cell):
    """nn.Dropout2d whose channel mask comes from the host (1/(1-p) or 0 per sample and channel).

    MindSpore's Dropout2D kernel draws from an internal state that a resumed process cannot restore, so a
    resumed run would drop other channels. The trainer loads a fresh mask into `keep_mask` before each step
    (`dropout_keep_masks`, `load_dropout_masks`); the first `x.shape[0]` rows are used. Eval mode is the identity,
    as in torch."""

    def __init__(self, p, channels, max_batch):
        super().__init__()
        self.p = float(p)
        self.keep_mask = Parameter(Tensor(np.ones((max_batch, channels, 1, 1), np.float32)), name="keep_mask",
                                   requires_grad=False)

    def construct(self, x):
        if not self.training:
            return x
        return x * self.keep_mask[:x.shape[0]]


MASK_PARAM_SUFFIX = ".keep_mask"


def is_dropout_mask(name):
    return name.endswith(MASK_PARAM_SUFFIX)


def _channels_before(sequence, index):
    """Channel count of the BatchNorm/Conv preceding position `index` of a SequentialCell."""
    for layer in reversed(list(sequence)[:index]):
        if isinstance(layer, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return layer.num_features
        if isinstance(layer, nn.Conv2d):
            return layer.out_channels
    raise ValueError("a Dropout2d must follow a Conv2d or BatchNorm2d in its SequentialCell")


def install_host_dropout(model, max_batch):
    """Replaces every nn.Dropout2d of `model` (they all sit in SequentialCells) by a HostMaskDropout2d; returns
    the new cells in a fixed order. Their mask parameters get their full dotted names."""
    installed = []
    for path, cell in list(model.cells_and_names()):
        if not isinstance(cell, nn.SequentialCell):
            continue
        for index, layer in enumerate(cell):
            if isinstance(layer, nn.Dropout2d):
                replacement = HostMaskDropout2d(1.0 - layer.keep_prob, _channels_before(cell, index), max_batch)
                cell[index] = replacement
                prefix = f"{path}.{index}" if path else str(index)
                replacement.keep_mask.name = prefix + MASK_PARAM_SUFFIX
                installed.append(replacement)
    return installed


def load_dropout_masks(cells, masks):
    """Writes the step's masks into the cells from the host, before the step's graph runs."""
    for cell, mask in zip(cells, masks):
        cell.keep_mask.set_data(Tensor(mask))


def dropout_keep_masks(rng, cells, shard=None):
    """One float32 mask per HostMaskDropout2d: Bernoulli(1 - p) / (1 - p), as torch's Dropout2d scales.

    shard (data parallel): `rows -> (global rows, this device's row indices)`; the masks are drawn for the global
    batch and each device keeps its rows, so devices drop different channels and together draw what one device
    running the global batch would."""
    masks = []
    for cell in cells:
        keep = 1.0 - cell.p
        rows, picked = (cell.keep_mask.shape[0], None) if shard is None else shard(cell.keep_mask.shape[0])
        shape = (rows,) + tuple(cell.keep_mask.shape[1:])
        mask = (rng.random(shape) < keep) / keep if keep > 0 else np.zeros(shape)
        masks.append((mask if picked is None else mask[picked]).astype(np.float32))
    return masks
