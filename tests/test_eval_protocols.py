"""mIoU accumulation vs hand counts and U2PL's histogram formula; evaluation protocols vs PyTorch re-implementations
of U2PL's eval.py (valiadte_whole, validate_city/scale_crop_process, the centre-crop proxy) on a fake model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ms_semiseg.eval import (
    IoUAccumulator,
    center_crop,
    sliding_window,
    to_class_map,
    whole_image,
    window_starts,
)
from ms_semiseg.eval.reference import intersection_and_union as u2pl_intersection_and_union

pytestmark = pytest.mark.numeric
# numpy (float64 model, cast) vs torch (float32) on logits up to ~30 after summing scales and flips: ~80 float32 ulps
TOL = dict(rtol=1e-5, atol=1e-5)
_RNG = np.random.default_rng(0)
# A fake two-head model: a fixed 1x1 conv plus a term that depends on the position inside the input, so that
# window placement, padding and flips all change the result.
HEADS = {"pred": (_RNG.normal(size=(5, 3)), _RNG.normal(size=5)),
         "proto": (_RNG.normal(size=(3, 3)), _RNG.normal(size=3))}


def _position_term(channels, height, width, lib):
    rows = lib.arange(height)[None, :, None] * 0.31
    cols = lib.arange(width)[None, None, :] * 0.17
    return lib.sin(rows + cols + lib.arange(channels)[:, None, None] * 1.3)


def numpy_predict(x):
    """(1,3,h,w) float32 -> {head: (1,C,h,w)} with numpy."""
    _, _, height, width = x.shape
    outputs = {}
    for head, (weight, bias) in HEADS.items():
        logits = np.tensordot(weight, x[0], axes=1) + bias[:, None, None]
        outputs[head] = (logits + _position_term(len(bias), height, width, np))[None].astype(np.float32)
    return outputs


def torch_predict(x):
    """The same model with torch ops."""
    _, _, height, width = x.shape
    outputs = {}
    for head, (weight, bias) in HEADS.items():
        weight, bias = torch.from_numpy(weight).float(), torch.from_numpy(bias).float()
        logits = torch.einsum("oc,bchw->bohw", weight, x) + bias.view(1, -1, 1, 1)
        outputs[head] = logits + _position_term(len(bias), height, width, torch).float()[None]
    return outputs


def torch_net_process(x, flip):
    outputs = torch_predict(x)
    if flip:
        flipped = torch_predict(torch.flip(x, [3]))
        outputs = {head: value + torch.flip(flipped[head], [3]) for head, value in outputs.items()}
    return outputs


def resize_ac(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def add_heads(total, part):
    return {head: total[head] + value for head, value in part.items()} if total else part


def torch_whole(image, scales, flip):
    """U2PL valiadte_whole per image: sum over scales of logits resized back to (h, w)."""
    image = torch.from_numpy(image)[None]
    height, width = image.shape[2:]
    total = {}
    for scale in scales:
        scaled = resize_ac(image, (round(height * scale), round(width * scale)))
        total = add_heads(total, {k: resize_ac(v, (height, width)) for k, v in torch_net_process(scaled, flip).items()})
    return {head: value[0].numpy() for head, value in total.items()}


def torch_scale_crop(image, crop, stride_rate, flip):
    """U2PL scale_crop_process (without the final resize), written with torch."""
    ori_h, ori_w = image.shape[2:]
    pad_h, pad_w = max(crop - ori_h, 0), max(crop - ori_w, 0)
    image = F.pad(image, (int(pad_w / 2), pad_w - int(pad_w / 2), int(pad_h / 2), pad_h - int(pad_h / 2)), value=0.0)
    new_h, new_w = image.shape[2:]
    stride = int(np.ceil(crop * stride_rate))
    grid_h, grid_w = int(np.ceil(float(new_h - crop) / stride) + 1), int(np.ceil(float(new_w - crop) / stride) + 1)
    total, count = {}, torch.zeros((new_h, new_w))
    for index_h in range(grid_h):
        for index_w in range(grid_w):
            end_h, end_w = min(index_h * stride + crop, new_h), min(index_w * stride + crop, new_w)
            rows, cols = slice(end_h - crop, end_h), slice(end_w - crop, end_w)
            count[rows, cols] += 1
            for head, value in torch_net_process(image[:, :, rows, cols], flip).items():
                total.setdefault(head, torch.zeros((1, value.shape[1], new_h, new_w)))
                total[head][:, :, rows, cols] += value
    top, left = int(pad_h / 2), int(pad_w / 2)
    return {head: (value / count)[:, :, top:top + ori_h, left:left + ori_w] for head, value in total.items()}


def torch_sliding(image, crop, stride_rate, base_size, scales, flip):
    """U2PL validate_city per image."""
    image = torch.from_numpy(image)[None]
    height, width = image.shape[2:]
    total = {}
    for scale in scales:
        long_size = round(scale * base_size)
        new_h, new_w = long_size, long_size
        if height > width:
            new_w = round(long_size / float(height) * width)
        else:
            new_h = round(long_size / float(width) * height)
        crops = torch_scale_crop(resize_ac(image, (new_h, new_w)), crop, stride_rate, flip)
        total = add_heads(total, {k: resize_ac(v, (height, width)) for k, v in crops.items()})
    return {head: value[0].numpy() for head, value in total.items()}


def normalized_image(height, width, seed=1):
    return np.random.default_rng(seed).normal(size=(3, height, width)).astype(np.float32)


def assert_heads_close(got, ref, shape):
    assert sorted(got) == sorted(ref) == ["pred", "proto"]
    for head in ref:
        assert got[head].shape == (len(HEADS[head][1]),) + shape and got[head].dtype == np.float32
        np.testing.assert_allclose(got[head], ref[head], **TOL)


# ----------------------------------------------------------------------------------------------- protocols


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.75, 1.25), (0.5, 1.5)])
@pytest.mark.parametrize("flip", [False, True])
def test_whole_image_matches_torch(scales, flip):
    image = normalized_image(23, 30)
    got = whole_image(numpy_predict, image, scales=scales, flip=flip)
    assert_heads_close(got, torch_whole(image, scales, flip), (23, 30))


@pytest.mark.parametrize("shape, base_size, scales", [
    ((37, 53), 53, (1.0,)),          # identity resize, 3x4 windows, no padding
    ((37, 53), 53, (1.0, 0.5)),      # at 0.5 the short side (18) is padded up to the crop
    ((53, 37), 64, (1.25,)),         # portrait, upscaled
    ((15, 19), 19, (1.0,)),          # smaller than the crop on both sides: one padded window
])
@pytest.mark.parametrize("flip", [False, True])
def test_sliding_window_matches_torch(shape, base_size, scales, flip):
    image = normalized_image(*shape)
    got = sliding_window(numpy_predict, image, crop=21, stride_rate=2 / 3, base_size=base_size, scales=scales,
                         flip=flip)
    assert_heads_close(got, torch_sliding(image, 21, 2 / 3, base_size, scales, flip), shape)


def test_window_starts_cityscapes():
    assert window_starts(1024, 769, 513) == [0, 255]
    assert window_starts(2048, 769, 513) == [0, 513, 1026, 1279]
    assert window_starts(769, 769, 513) == [0]


def test_sliding_window_visits_cityscapes_windows():
    """2048x1024 at the defaults: 8 windows of 769 at rows {0, 255} x cols {0, 513, 1026, 1279}."""
    rows, cols = np.meshgrid(np.arange(1024, dtype=np.float32), np.arange(2048, dtype=np.float32), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)])  # each window reports its own top-left corner
    seen = []

    def recording_predict(x):
        assert x.shape == (1, 3, 769, 769)
        seen.append((int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0])))
        return {"pred": np.zeros((1, 1, 769, 769), np.float32)}

    sliding_window(recording_predict, image)
    assert sorted(seen) == [(row, col) for row in (0, 255) for col in (0, 513, 1026, 1279)]


def torch_center_crop(image, label, size):
    """U2PL's val Crop ('center'): pad image with 0 and label with 0, then the centred window."""
    crop_h, crop_w = size
    image, label = torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.float32))[None, None]
    pad_h, pad_w = max(crop_h - image.shape[2], 0), max(crop_w - image.shape[3], 0)
    border = (int(pad_w / 2), pad_w - int(pad_w / 2), int(pad_h / 2), pad_h - int(pad_h / 2))
    image, label = F.pad(image, border, value=0.0), F.pad(label, border, value=0)
    top, left = (image.shape[2] - crop_h) // 2, (image.shape[3] - crop_w) // 2
    window = (slice(None), slice(None), slice(top, top + crop_h), slice(left, left + crop_w))
    return image[window], label[window][0, 0].numpy().astype(np.uint8)


@pytest.mark.parametrize("size", [(21, 17), (33, 50), (25, 41)])
def test_center_crop_matches_torch(size):
    image = normalized_image(29, 41)
    label = np.random.default_rng(2).choice(np.array([1, 2, 255], np.uint8), (29, 41))
    got_logits, got_label = center_crop(numpy_predict, image, label, size)
    ref_image, ref_label = torch_center_crop(image, label, size)
    ref_logits = {head: value[0].numpy() for head, value in torch_predict(ref_image).items()}
    assert_heads_close(got_logits, ref_logits, size)
    np.testing.assert_array_equal(got_label, ref_label)


def test_predict_of_wrong_size_is_rejected():
    def downsampling_predict(x):
        return {"pred": np.zeros((1, 2, x.shape[2] // 2, x.shape[3] // 2), np.float32)}

    with pytest.raises(ValueError, match="pred"):
        whole_image(downsampling_predict, normalized_image(8, 8))


def test_to_class_map_ties_go_to_first_class():
    logits = np.array([[[1.0, 2.0]], [[1.0, 3.0]], [[0.5, 3.0]]], np.float32)
    np.testing.assert_array_equal(to_class_map(logits), [[0, 1]])


# ----------------------------------------------------------------------------------------------- mIoU


def test_iou_hand_computed():
    accumulator = IoUAccumulator(3)
    accumulator.update(np.array([[0, 1, 1], [1, 0, 2]]), np.array([[0, 0, 1], [1, 2, 255]]))
    # valid pixels: pred 0 1 1 1 0 vs gt 0 0 1 1 2 -> I = (1, 2, 0); U = (2+2-1, 3+2-2, 0+1-0) = (3, 3, 1)
    np.testing.assert_array_equal(accumulator.intersection, [1, 2, 0])
    np.testing.assert_array_equal(accumulator.union, [3, 3, 1])
    np.testing.assert_allclose(accumulator.iou(), [1 / 3, 2 / 3, 0.0])
    assert accumulator.miou() == pytest.approx(1 / 3)
    accumulator.update(np.array([2, 2]), np.array([2, 255]))  # I/U of class 2 gain 1 each
    np.testing.assert_allclose(accumulator.iou(), [1 / 3, 2 / 3, 1 / 2])


def test_iou_matches_u2pl_over_a_dataset():
    rng = np.random.default_rng(5)
    accumulator, intersection, union = IoUAccumulator(6), np.zeros(6), np.zeros(6)
    for _ in range(4):
        pred = rng.integers(0, 6, (9, 11))
        gt = np.where(rng.random((9, 11)) < 0.2, 255, rng.integers(0, 5, (9, 11)))  # class 5 never in GT
        accumulator.update(pred, gt)
        part_i, part_u = u2pl_intersection_and_union(pred, gt, 6)
        intersection, union = intersection + part_i, union + part_u
    np.testing.assert_array_equal(accumulator.intersection, intersection)
    np.testing.assert_array_equal(accumulator.union, union)
    assert accumulator.miou() == pytest.approx(np.mean(intersection / (union + 1e-10)))


def test_format_table():
    accumulator = IoUAccumulator(2)
    accumulator.update(np.array([0, 0, 1]), np.array([0, 1, 1]))  # IoU 0.5 and 0.5
    lines = accumulator.format_table(["background", "cat"]).splitlines()
    assert lines[1].split() == ["background", "50.00"] and lines[2].split() == ["cat", "50.00"]
    assert lines[-1].split() == ["mIoU", "50.00"]
