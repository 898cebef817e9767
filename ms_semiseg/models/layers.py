"""Layer factories whose defaults match PyTorch (padding, bias, init, BatchNorm momentum).

MindSpore differs from PyTorch in ways that silently change numbers: Conv2d defaults to pad_mode='same' and
no bias, BatchNorm momentum is 1 - torch momentum, and default initialisers changed between versions. Every layer
of the model is built through these helpers so the parameter names, shapes and init follow torch.
"""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, HeUniform, Uniform

# torch BatchNorm2d(momentum=0.1) == MindSpore BatchNorm2d(momentum=0.9)
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


def conv2d(in_ch, out_ch, kernel_size, stride=1, padding=0, dilation=1, bias=False, init="torch"):
    """torch.nn.Conv2d equivalent. init='torch': torch's default (kaiming_uniform a=sqrt(5), bias U(+-1/sqrt(fan_in)));
    init='kaiming_fan_out': torchvision ResNet's kaiming_normal(mode='fan_out', relu)."""
    fan_in = in_ch * kernel_size * kernel_size
    if init == "torch":
        weight_init = HeUniform(negative_slope=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu")
    elif init == "kaiming_fan_out":
        weight_init = HeNormal(negative_slope=0, mode="fan_out", nonlinearity="relu")
    else:
        raise ValueError(f"unknown conv init {init!r}")
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, pad_mode="pad", padding=padding,
                     dilation=dilation, has_bias=bias, weight_init=weight_init,
                     bias_init=Uniform(1.0 / math.sqrt(fan_in)) if bias else "zeros")


def batch_norm(num_features, sync=False):
    """BatchNorm2d with torch's eps/momentum; SyncBatchNorm when requested (GPU/Ascend data-parallel only)."""
    if sync:
        return nn.SyncBatchNorm(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
    return nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


def dropout2d(p):
    # channel-wise dropout like torch.nn.Dropout2d; `p` is the drop probability (nn.Dropout's first arg is keep_prob)
    return nn.Dropout2d(p=p)


# The ResNet stem's 3x3/2 max-pool (config key net.encoder.kwargs.stem_pool):
#   pytorch: torch MaxPool2d(3, 2, padding=1, ceil_mode=True), as U2PL/PCR's PyTorch code (the paper's numbers);
#   same:    MaxPool2d(3, 2, pad_mode='same'), as the original PCR MindSpore release (its "Ours (this repo.)" row).
# They agree for odd input sizes; for an even size n, `same` gives n/2 outputs (pads one -inf row/column at the
# end only), `pytorch` gives n/2 + 1 (one at each side), so the grid after the stem shifts.
STEM_POOLS = ("pytorch", "same")


def max_pool_3x3_s2(mode="pytorch"):
    if mode == "same":
        return nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
    if mode != "pytorch":
        raise ValueError(f"max-pool mode {mode!r}: expected one of {STEM_POOLS}")
    return nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1, ceil_mode=True)


class CeilMaxPool3x3s2(nn.Cell):
    """max_pool_3x3_s2('pytorch') as an explicit -inf pad + unpadded ('valid') max-pool: the same values bit for bit
    (a max takes no rounding), written with operators MindSpore's ONNX exporter knows (the padded ceil-mode
    nn.MaxPool2d runs MaxPool3DWithArgmax, which it cannot export). Used by `export --format onnx`.

    torch's ceil mode gives ceil((n - 1) / 2) + 1 outputs from n: one -inf row/column before, and after it one for
    odd n, two for even n (the last window would otherwise be missing), then 3x3/2 windows without padding."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")

    def construct(self, x):
        # concatenated -inf slabs (ones_like * -inf): MindSpore's CPU backend has no PyNative ConstantPadND kernel
        h, w = x.shape[2], x.shape[3]
        x = ops.cat((self._border(x[:, :, :, :1]), x, self._border(x[:, :, :, :2 - w % 2])), 3)
        x = ops.cat((self._border(x[:, :, :1, :]), x, self._border(x[:, :, :2 - h % 2, :])), 2)
        return self.pool(x)

    @staticmethod
    def _border(like):
        return ops.ones_like(like) * float("-inf")


class GlobalAvgPool(nn.Cell):
    """AdaptiveAvgPool2d((1, 1)) as a spatial mean (no parameters; keeps the Sequential indices of torch)."""

    def construct(self, x):
        return ops.mean(x, (2, 3), keep_dims=True)


def resize_bilinear(x, size):
    """F.interpolate(x, size, mode='bilinear', align_corners=True): the only resize used inside the model."""
    return ops.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _align_corners_taps(coords, in_size, out_size):
    """Source taps of bilinear align_corners along one axis: (low, high, weight of high), float32 as torch."""
    scale = float(in_size - 1) / float(out_size - 1) if out_size > 1 else 0.0
    position = coords.astype(ms.float32) * scale
    low = ops.floor(position)
    weight = position - low
    low = low.astype(ms.int32)
    return low, ops.minimum(low + 1, in_size - 1), weight


def bilinear_at(feat, batch, rows, cols, out_size):
    """resize_bilinear(feat, out_size)[batch, :, rows, cols] -> (N, D) without the resize: the one point sampler of
    the training losses (PCR's patch pixels, BRPG's grid and confident pixels).

    feat (B, D, h, w); batch, rows, cols int32 (N,) (rows/cols in the out_size frame). Gradients reach `feat`."""
    _, dim, height, width = feat.shape
    table = feat.transpose(0, 2, 3, 1).reshape(-1, dim)
    row0, row1, wy = _align_corners_taps(rows, height, out_size[0])
    col0, col1, wx = _align_corners_taps(cols, width, out_size[1])
    base = batch * (height * width)
    wy, wx = wy.reshape(-1, 1), wx.reshape(-1, 1)

    def tap(r, c):
        return ops.gather(table, base + r * width + c, 0)

    top = tap(row0, col0) * (1.0 - wx) + tap(row0, col1) * wx
    bottom = tap(row1, col0) * (1.0 - wx) + tap(row1, col1) * wx
    return top * (1.0 - wy) + bottom * wy


def points_of_every_image(batch, coords):
    """(image index, row, col), int32 (B*N,) each, image-major: the same N pixels coords int32 (N, 2) in each of
    `batch` images."""
    count = coords.shape[0]
    images = ops.broadcast_to(ops.arange(0, batch, dtype=ms.int32).reshape(-1, 1), (batch, count)).reshape(-1)
    return images, ops.tile(coords[:, 0], (batch,)), ops.tile(coords[:, 1], (batch,))


def clamped_l2_norm(x, axis):
    """max(||x||, 1e-12) along `axis` (kept), F.normalize's divisor."""
    return ops.maximum(ops.sqrt((x * x).sum(axis=axis, keepdims=True)), 1e-12)


def l2_normalize(x, axis):
    """F.normalize: x / max(||x||, 1e-12). ops.L2Normalize clamps the squared norm instead (differs near zero)."""
    return x / clamped_l2_norm(x, axis)
