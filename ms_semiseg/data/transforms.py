"""Host-side (numpy + cv2) image/label transforms reproducing U2PL's torch pipeline (spec B.4).

Conventions: images are RGB uint8 HxWx3 until `normalize`, float32 CHW afterwards; labels are HxW integer maps
(or None for unlabeled samples, passed through untouched). Random steps take a `numpy.random.Generator`, drawn in
U2PL's order (resize branch, scale, flip, crop row, crop column), so a seeded generator reproduces a sample.
"""

import cv2
import numpy as np

from ms_semiseg.errors import UserError

# U2PL's Crop pads labels with 0 (background), not with ignore_label: its code overrides the value ("change to 0").
# Kept as the default for parity with the published numbers; pass label_pad=255 to ignore the padding instead.
U2PL_LABEL_PAD = 0


def as_hw(size):
    """int or (h, w) -> (h, w) ints."""
    if np.isscalar(size):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def normalize(image, mean, std):
    """HxWx3 uint8 RGB -> float32 CHW, (x - mean) / std per channel (computed in float32 like U2PL's Normalize)."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1))


def resize_bilinear(image, size):
    """CHW float32 -> CHW at size (h, w): torch bilinear, align_corners=False, no antialias.

    cv2.INTER_LINEAR uses the same half-pixel mapping and border clamping; torch computes the source coordinate
    in float32 where cv2 uses double, so they agree to float32 rounding of the coordinate, not bit for bit
    (measured on white noise: max |diff| ~1e-5 at 50 px, ~2e-4 at 500 px). cv2 is kept for the loader's speed
    (a numpy version is ~5-15x slower on Cityscapes-size images).
    """
    height, width = as_hw(size)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    resized = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.reshape(height, width, -1).transpose(2, 0, 1))


def _legacy_nearest_index(in_size, out_size):
    """torch 'nearest' (legacy) source index floor(dst * in/out), with the scale and product in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def resize_nearest(label, size):
    """HxW label -> size (h, w) with torch's legacy 'nearest'.

    Indexed by hand: cv2.INTER_NEAREST computes the scale in double and picks a different pixel where
    dst*in/out lands within rounding of an integer.
    """
    height, width = as_hw(size)
    rows = _legacy_nearest_index(label.shape[0], height)
    cols = _legacy_nearest_index(label.shape[1], width)
    return label[rows[:, None], cols[None, :]]


def _linear_taps(in_size, out_size):
    """torch align_corners=True bilinear taps along one axis: (index0, index1, weight0, weight1), float32 math."""
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0.0)
    source = np.arange(out_size, dtype=np.float32) * scale
    index0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    index1 = np.minimum(index0 + 1, in_size - 1)
    weight1 = np.clip(source - index0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return index0, index1, np.float32(1.0) - weight1, weight1


def _interpolate_axis(array, axis, taps):
    """Blend the two taps along `axis` (weights broadcast along that axis)."""
    index0, index1, weight0, weight1 = taps
    shape = [1] * array.ndim
    shape[axis] = -1
    out = np.take(array, index0, axis=axis)
    out *= weight0.reshape(shape)
    out += np.take(array, index1, axis=axis) * weight1.reshape(shape)
    return out


def resize_bilinear_align_corners(array, size):
    """(..., H, W) float array -> (..., h, w): torch F.interpolate(bilinear, align_corners=True).

    cv2 has no align_corners mode, hence the index math: source = dst * (in-1)/(out-1) in float32 as torch
    does, width interpolated first and height second (torch's order of the same products).
    """
    height, width = as_hw(size)
    array = np.asarray(array, dtype=np.float32)
    if array.shape[-2:] == (height, width):
        return array.copy()
    blended = _interpolate_axis(array, -1, _linear_taps(array.shape[-1], width))
    return _interpolate_axis(blended, -2, _linear_taps(array.shape[-2], height))


def resize_pair(image, label, size):
    """Image bilinear (align_corners=False) and label legacy-nearest to the same size."""
    return resize_bilinear(image, size), None if label is None else resize_nearest(label, size)


def draw_rand_scale(scale_range, rng):
    """U2PL RandResize: with p=.5 s ~ U[low, 1), otherwise s ~ U[1, high)."""
    low, high = scale_range
    if rng.random() < 0.5:
        return low + (1.0 - low) * rng.random()
    return 1.0 + (high - 1.0) * rng.random()


def rand_resize(image, label, scale_range, rng):
    """Resize by a random scale s (see `draw_rand_scale`) to (int(h*s), int(w*s))."""
    scale = draw_rand_scale(scale_range, rng)
    height, width = image.shape[-2:]
    return resize_pair(image, label, (int(height * scale), int(width * scale)))


def hflip(image, label):
    """Mirror the last axis of a CHW image and an HxW label."""
    flipped = np.ascontiguousarray(image[..., ::-1])
    return flipped, None if label is None else np.ascontiguousarray(label[:, ::-1])


def random_hflip(image, label, rng):
    """`hflip` with probability 0.5."""
    return hflip(image, label) if rng.random() < 0.5 else (image, label)


def _spatial_pad(array, top, bottom, left, right, value):
    widths = [(0, 0)] * (array.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(array, widths, mode="constant", constant_values=value)


def center_pad(image, label, size, label_pad=U2PL_LABEL_PAD):
    """Pad to at least `size` with the extra split evenly (the odd pixel at the bottom/right).

    The image is padded with 0, i.e. the mean colour after normalisation. Returns (image, label, (top, left)).
    """
    crop_h, crop_w = as_hw(size)
    height, width = image.shape[-2:]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        image = _spatial_pad(image, top, pad_h - top, left, pad_w - left, 0)
        if label is not None:
            label = _spatial_pad(label, top, pad_h - top, left, pad_w - left, label_pad)
    return image, label, (top, left)


def _crop_offsets(shape, size, mode, rng):
    (height, width), (crop_h, crop_w) = shape, size
    if mode == "rand":
        return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    if mode == "center":
        return (height - crop_h) // 2, (width - crop_w) // 2
    raise ValueError(f"crop mode {mode!r}: expected 'rand' or 'center'")


def crop(image, label, size, mode="rand", rng=None, label_pad=U2PL_LABEL_PAD):
    """U2PL Crop: `center_pad` to at least `size`, then a random ('rand', needs rng) or centred window."""
    crop_h, crop_w = as_hw(size)
    image, label, _ = center_pad(image, label, (crop_h, crop_w), label_pad)
    top, left = _crop_offsets(image.shape[-2:], (crop_h, crop_w), mode, rng)
    rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
    image = np.ascontiguousarray(image[..., rows, cols])
    return image, None if label is None else np.ascontiguousarray(label[rows, cols])


class SegTransform:
    """U2PL's pipeline: normalize -> [rand_resize] -> [random hflip] -> [crop]; optional steps are None/False."""

    def __init__(self, mean, std, scale_range=None, flip=False, crop_size=None, crop_mode="center",
                 label_pad=U2PL_LABEL_PAD):
        self.mean, self.std = mean, std
        self.scale_range, self.flip = scale_range, flip
        self.crop_size, self.crop_mode, self.label_pad = crop_size, crop_mode, label_pad

    @property
    def is_random(self):
        return bool(self.scale_range or self.flip or (self.crop_size and self.crop_mode == "rand"))

    def __call__(self, image, label=None, rng=None):
        """RGB uint8 HxWx3 (+ HxW label or None) -> (float32 CHW, label)."""
        if self.is_random and rng is None:
            raise ValueError("a random transform needs a numpy.random.Generator (rng)")
        image = normalize(image, self.mean, self.std)
        if self.scale_range:
            image, label = rand_resize(image, label, self.scale_range, rng)
        if self.flip:
            image, label = random_hflip(image, label, rng)
        if self.crop_size:
            image, label = crop(image, label, self.crop_size, self.crop_mode, rng, self.label_pad)
        return image, label


# Keys of U2PL's transform builder that this port does not implement; accepting them silently would change
# the augmentation without notice.
_UNSUPPORTED_KEYS = ("resize", "rand_rotation", "cutout", "cutmix")


def _config_error(key, value, expected):
    return UserError(f"{key}: {value!r} is not valid, expected {expected}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value, count):
    """The list of `count` numbers in `value`, or None if it is anything else."""
    ok = isinstance(value, (list, tuple)) and len(value) == count and all(_is_number(v) for v in value)
    return list(value) if ok else None


def _scale_range(value, key):
    scales = _numbers(value, 2)
    if scales is None or not 0 < scales[0] <= 1 <= scales[1]:
        raise _config_error(key, value, "[low, high] with 0 < low <= 1 <= high, e.g. [0.5, 2.0]")
    return float(scales[0]), float(scales[1])


def _crop_size(value, key):
    size = [value, value] if _is_number(value) else _numbers(value, 2)
    if size is None or not all(isinstance(v, int) and v > 0 for v in size):
        raise _config_error(key, value, "a positive int or [h, w] of positive ints")
    return tuple(size)


def _crop_settings(value, key, default_mode):
    if not isinstance(value, dict) or "size" not in value:
        raise _config_error(key, value, "a mapping {type: rand|center, size: [h, w]}")
    mode = value.get("type", default_mode)
    if mode not in ("rand", "center"):
        raise _config_error(f"{key}.type", mode, "'rand' or 'center'")
    return _crop_size(value["size"], f"{key}.size"), mode


def _channel_triple(dataset_cfg, key):
    value = _numbers(dataset_cfg.get(key), 3)
    if value is None:
        raise _config_error(f"dataset.{key}", dataset_cfg.get(key), "three numbers (RGB, 0-255 scale)")
    return [float(v) for v in value]


def build_transform(dataset_cfg, split):
    """SegTransform from the upstream `dataset` config section, for split 'train' or 'val'."""
    split_cfg = dataset_cfg.get(split) or {}
    prefix = f"dataset.{split}"
    for key in _UNSUPPORTED_KEYS:
        if split_cfg.get(key):
            raise UserError(f"{prefix}.{key}: not supported by this port, expected the key to be absent")
    if split_cfg.get("GaussianBlur"):
        raise UserError(f"{prefix}.GaussianBlur: True is not supported (U2PL's PCR configs use False), expected False")
    scale_range = split_cfg.get("rand_resize")
    crop_cfg = split_cfg.get("crop")
    crop_size, crop_mode = (None, "center")
    if crop_cfg:
        crop_size, crop_mode = _crop_settings(crop_cfg, f"{prefix}.crop", "rand" if split == "train" else "center")
    return SegTransform(
        mean=_channel_triple(dataset_cfg, "mean"),
        std=_channel_triple(dataset_cfg, "std"),
        scale_range=_scale_range(scale_range, f"{prefix}.rand_resize") if scale_range else None,
        flip=bool(split_cfg.get("flip", False)),
        crop_size=crop_size,
        crop_mode=crop_mode,
    )


# ------------------------------------------------------------------------------------ strong view (UniMatch)
# BRPG's unlabeled images (UniMatch's recipe): the student sees a strong view of the weak crop, the teacher the
# weak one: ColorJitter(0.5, 0.5, 0.5, 0.25) with p=0.8, RandomGrayscale(p=0.2), GaussianBlur(sigma ~ U(0.1, 2))
# with p=0.5. The operations are torchvision's PIL-backend ones (ImageEnhance for brightness / contrast /
# saturation, an 8-bit HSV hue shift), on the crop quantised to uint8, as upstream works on PIL images.

STRONG_VIEW_KEY = "dataset.train.strong_view"
JITTER_PROB, GRAYSCALE_PROB, BLUR_PROB = 0.8, 0.2, 0.5
JITTER_STRENGTH = (0.5, 0.5, 0.5, 0.25)  # brightness, contrast, saturation, hue
BLUR_SIGMA = (0.1, 2.0)


def to_uint8_rgb(image, mean, std):
    """Inverse of `normalize`: float32 CHW -> HxWx3 uint8 RGB (rounded, clipped)."""
    rgb = image.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def adjust_hue(pil_image, factor):
    """torchvision `adjust_hue` (PIL backend): the 8-bit HSV hue channel shifted by int(factor * 255), wrapping."""
    from PIL import Image
    hue, saturation, value = pil_image.convert("HSV").split()
    shifted = (np.asarray(hue, np.int64) + int(factor * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), saturation, value)).convert("RGB")


def color_jitter(pil_image, factors, order):
    """torchvision ColorJitter with drawn factors (brightness, contrast, saturation, hue) applied in `order`."""
    from PIL import ImageEnhance
    operations = (lambda img, f: ImageEnhance.Brightness(img).enhance(f),
                  lambda img, f: ImageEnhance.Contrast(img).enhance(f),
                  lambda img, f: ImageEnhance.Color(img).enhance(f),
                  adjust_hue)
    for index in order:
        pil_image = operations[index](pil_image, factors[index])
    return pil_image


def draw_strong_view(rng):
    """The random choices of one strong view: {'jitter': (factors, order) or None, 'grayscale': bool,
    'blur_sigma': float or None}; factors ~ U(1 - s, 1 + s) (hue U(-s, s)), order a permutation of the four."""
    jitter = None
    if rng.random() < JITTER_PROB:
        factors = [float(rng.uniform(max(0.0, 1.0 - s), 1.0 + s)) for s in JITTER_STRENGTH[:3]]
        factors.append(float(rng.uniform(-JITTER_STRENGTH[3], JITTER_STRENGTH[3])))
        jitter = (tuple(factors), tuple(int(i) for i in rng.permutation(4)))
    grayscale = bool(rng.random() < GRAYSCALE_PROB)
    blur_sigma = float(rng.uniform(*BLUR_SIGMA)) if rng.random() < BLUR_PROB else None
    return {"jitter": jitter, "grayscale": grayscale, "blur_sigma": blur_sigma}


def apply_strong_view(rgb, choices):
    """HxWx3 uint8 RGB -> the strong view described by `draw_strong_view`'s choices (uint8 RGB)."""
    from PIL import Image, ImageFilter
    pil_image = Image.fromarray(rgb)
    if choices["jitter"] is not None:
        pil_image = color_jitter(pil_image, *choices["jitter"])
    if choices["grayscale"]:
        pil_image = pil_image.convert("L").convert("RGB")
    if choices["blur_sigma"] is not None:
        pil_image = pil_image.filter(ImageFilter.GaussianBlur(radius=choices["blur_sigma"]))
    return np.asarray(pil_image, np.uint8)


def strong_view(image, mean, std, rng):
    """Strong view of a normalized float32 CHW crop (the weak view) -> normalized float32 CHW."""
    return normalize(apply_strong_view(to_uint8_rgb(image, mean, std), draw_strong_view(rng)), mean, std)


def strong_view_enabled(dataset_cfg):
    """`dataset.train.strong_view` (default false): whether the unlabeled stream also yields a strong view."""
    value = (dataset_cfg.get("train") or {}).get("strong_view", False)
    if not isinstance(value, bool):
        raise _config_error(STRONG_VIEW_KEY, value, "true or false")
    return value
