"""Class names, colour palettes, colourised label maps and atomic PNG writes."""

import os
import uuid

import cv2
import numpy as np

from ms_semiseg.errors import UserError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# Cityscapes trainIds 0..18 with the official cityscapesScripts colours.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
_CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def voc_palette():
    """The standard 256-entry VOC colormap: bits of the index are interleaved into R, G, B from the MSB down."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette[index] = rgb
    return palette


def cityscapes_palette():
    """256 entries: the 19 trainId colours, then black (ignore 255 included)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(_CITYSCAPES_COLORS)] = _CITYSCAPES_COLORS
    return palette


VOC_PALETTE = voc_palette()
CITYSCAPES_PALETTE = cityscapes_palette()
# A custom dataset has no default names; the VOC colormap gives every index its own colour, whatever the classes.
_BY_KIND = {"pascal": (VOC_CLASSES, VOC_PALETTE), "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
            "custom": ((), VOC_PALETTE)}


def class_names(kind):
    """Default class names of a dataset kind ('pascal', 'cityscapes'; empty for 'custom')."""
    return _BY_KIND[kind][0]


def palette_for(kind):
    """(256,3) uint8 RGB default palette of a dataset kind ('pascal', 'cityscapes' or 'custom')."""
    return _BY_KIND[kind][1]


def resolve_class_names(kind, num_classes, configured=None, key="dataset.class_names"):
    """`configured` (checked: one unique string per class), else the kind's names when their count matches,
    else 'class 0', 'class 1', ... (a VOC-layout dataset with other classes must not be labelled 'aeroplane')."""
    if configured is not None:
        return _checked_names(configured, num_classes, key)
    names = class_names(kind)
    return tuple(names) if len(names) == num_classes else tuple(f"class {i}" for i in range(num_classes))


def resolve_palette(kind, num_classes, configured=None, key="dataset.palette"):
    """(256,3) uint8: `configured` [[r, g, b], ...] (one row per class, black after), else the kind's palette
    when it has a colour for every class, else the VOC colormap (Cityscapes' would leave classes 19+ black)."""
    if configured is not None:
        return _checked_palette(configured, num_classes, key)
    return palette_for(kind) if num_classes <= len(class_names(kind)) else VOC_PALETTE


def _check_count(values, num_classes, key, what):
    if not isinstance(values, (list, tuple)):
        raise UserError(f"{key}: {values!r} is not a list, expected a list of {num_classes} {what}")
    if len(values) != num_classes:
        raise UserError(f"{key}: {len(values)} entries but net.num_classes is {num_classes}, expected one "
                        f"{what[:-1]} per class")


def _checked_names(names, num_classes, key):
    _check_count(names, num_classes, key, "names")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            # YAML reads yes/no/null/1 unquoted as bool/None/int: ask for quotes rather than guess
            raise UserError(f"{key}[{index}]: {name!r} is not a name, expected a non-empty string (quote it)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"{key}: {duplicates[0]!r} appears more than once, expected unique class names")
    return tuple(names)


def _checked_palette(rows, num_classes, key):
    _check_count(rows, num_classes, key, "colours")
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index, row in enumerate(rows):
        is_rgb = isinstance(row, (list, tuple)) and len(row) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in row)
        if not is_rgb:
            raise UserError(f"{key}[{index}]: {row!r} is not a colour, expected [r, g, b] with ints 0..255")
        palette[index] = row
    return palette


def colorize(label, palette=VOC_PALETTE):
    """HxW class-index map (any integer dtype, values 0..255) -> HxWx3 RGB uint8."""
    return palette[np.asarray(label).astype(np.uint8)]


def save_png_atomic(path, array):
    """Write an HxW (index) or HxWx3 (RGB) uint8 array as PNG: encode, write a temp file beside `path`, rename.

    A crash or a concurrent reader never sees a half-written PNG; the parent folder is created if needed.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed for an array of shape {array.shape}, dtype {array.dtype}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # A unique name in the same folder (same file system, so os.replace is atomic); plain open() keeps the
    # usual umask permissions, unlike tempfile.mkstemp's 0600.
    tmp_path = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp_path, "wb") as handle:
            handle.write(encoded.tobytes())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
