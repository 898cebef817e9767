"""U2PL's evaluation protocols on the host (spec B.8), independent of the framework that runs the model.

`predict(x) -> {head: logits}` takes a float32 (1,3,h,w) normalised image and returns (1,C,h,w) logits per head
('pred', 'proto', ...), already resized to the input's h,w (bilinear, align_corners=True, as U2PL's net_process).
Every head is treated alike. Protocols return {head: float32 (C,H,W) logits} summed over scales (and flips);
take the argmax over C for the class map.
"""

import math

import numpy as np

from ms_semiseg.data.transforms import U2PL_LABEL_PAD, as_hw, center_pad, resize_bilinear_align_corners
from ms_semiseg.data.transforms import crop as crop_image_and_label


def _run_predict(predict, image):
    """predict on a CHW image -> {head: (C,h,w) float32}, checking the model wrapper kept the input size."""
    batch = np.ascontiguousarray(image[None], dtype=np.float32)
    outputs = {}
    for head, logits in predict(batch).items():
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 4 or logits.shape[0] != 1 or logits.shape[2:] != image.shape[1:]:
            raise ValueError(f"predict()['{head}'] has shape {logits.shape}, expected (1, C, {image.shape[1]}, "
                             f"{image.shape[2]}) logits at the input size")
        outputs[head] = logits[0]
    return outputs


def predict_with_flip(predict, image, flip=False):
    """Logits of a CHW image; with `flip`, plus the logits of the mirrored image mirrored back."""
    outputs = _run_predict(predict, image)
    if flip:
        for head, logits in _run_predict(predict, np.ascontiguousarray(image[..., ::-1])).items():
            outputs[head] = outputs[head] + logits[..., ::-1]
    return outputs


def _sum_heads(parts):
    """Head-wise sum of {head: array} dicts (never in place: the first part may be a view of predict's output)."""
    total = {}
    for part in parts:
        for head, logits in part.items():
            total[head] = logits if head not in total else total[head] + logits
    return total


def _resize_if_needed(array, size):
    return array if array.shape[-2:] == tuple(size) else resize_bilinear_align_corners(array, size)


def _multi_scale(image, scales, scaled_size, process):
    """Sum over scales of process(image resized to scaled_size(scale)), each result resized back to (h, w).

    All resizes are bilinear with align_corners=True; a same-size resize is the identity and is skipped.
    """
    height, width = image.shape[1:]

    def one_scale(scale):
        size = scaled_size(scale)
        scaled = _resize_if_needed(image, size)
        return {head: _resize_if_needed(logits, (height, width)) for head, logits in process(scaled).items()}

    return _sum_heads(one_scale(scale) for scale in scales)


def whole_image(predict, img_chw, scales=(1.0,), flip=False):
    """U2PL VOC protocol (`valiadte_whole`): the whole image per scale, at (round(h*s), round(w*s)).

    Upstream uses Python's round() for the scaled size; scale 1.0 is the image at its original size.
    """
    height, width = img_chw.shape[1:]
    return _multi_scale(img_chw, scales, lambda s: (round(height * s), round(width * s)),
                        lambda scaled: predict_with_flip(predict, scaled, flip))


def window_starts(length, crop_size, stride):
    """Window start positions along one axis: every `stride`, the last window clamped to end at the border.

    For a 2048x1024 Cityscapes image with crop 769 and stride ceil(769*2/3) = 513:
    rows (length 1024) -> [0, 255]; columns (length 2048) -> [0, 513, 1026, 1279].
    """
    count = int(math.ceil((length - crop_size) / stride)) + 1
    return [min(index * stride + crop_size, length) - crop_size for index in range(count)]


def _sliding_windows(predict, image, crop_size, stride, flip):
    """U2PL scale_crop_process without the final resize: pad, sum window logits, divide by overlap, unpad."""
    crop_h, crop_w = crop_size
    height, width = image.shape[1:]
    padded, _, (top, left) = center_pad(image, None, crop_size)
    padded_h, padded_w = padded.shape[1:]
    total, count = {}, np.zeros((padded_h, padded_w), dtype=np.float32)
    for row in window_starts(padded_h, crop_h, stride[0]):
        for col in window_starts(padded_w, crop_w, stride[1]):
            rows, cols = slice(row, row + crop_h), slice(col, col + crop_w)
            logits = predict_with_flip(predict, np.ascontiguousarray(padded[:, rows, cols]), flip)
            for head, value in logits.items():
                total.setdefault(head, np.zeros((value.shape[0], padded_h, padded_w), dtype=np.float32))
                total[head][:, rows, cols] += value
            count[rows, cols] += 1
    return {head: (value / count)[:, top:top + height, left:left + width] for head, value in total.items()}


def _long_side_size(height, width, long_size):
    """U2PL validate_city: the long side becomes long_size, the other keeps the aspect ratio (Python round)."""
    if height > width:
        return long_size, round(long_size / float(height) * width)
    return round(long_size / float(width) * height), long_size


def sliding_window(predict, img_chw, crop=769, stride_rate=2 / 3, base_size=2048, scales=(1.0,), flip=False):
    """U2PL Cityscapes protocol (`validate_city`).

    Per scale s: resize so the long side is round(base_size*s) (align_corners=True; identity for 2048x1024 at
    s=1); zero-pad (the mean colour) centrally up to `crop` if smaller; predict windows of `crop` every
    ceil(crop*stride_rate) pixels, the last one clamped to the border (2048x1024, crop 769: rows 0, 255 and
    columns 0, 513, 1026, 1279, 8 windows); sum the raw logits and divide by the per-pixel window count; remove
    the padding; resize to the original (h, w) with align_corners=True. Scales are summed.
    """
    crop_size = as_hw(crop)
    stride = tuple(int(math.ceil(side * stride_rate)) for side in crop_size)
    height, width = img_chw.shape[1:]
    return _multi_scale(img_chw, scales, lambda s: _long_side_size(height, width, round(s * base_size)),
                        lambda scaled: _sliding_windows(predict, scaled, crop_size, stride, flip))


def center_crop(predict, img_chw, label, crop_size, label_pad=U2PL_LABEL_PAD):
    """Training-time proxy validation: the train crop's centre mode (same padding rules) and one prediction.

    Returns ({head: (C,ch,cw) logits}, cropped label). The label is padded with 0 like U2PL's val loader, so
    padding counts as background in this proxy metric.
    """
    image, label = crop_image_and_label(img_chw, label, crop_size, mode="center", label_pad=label_pad)
    return _run_predict(predict, image), label


def to_class_map(logits):
    """(C,H,W) logits -> uint8 (H,W) argmax (ties go to the first class, like torch.max)."""
    return np.argmax(logits, axis=0).astype(np.uint8)
