"""PASCAL VOC (SegmentationClassAug), Cityscapes (gtFine trainIds) and custom-folder readers driven by split lists.

Layouts (spec D; `dataset.type` picks one): VOC `JPEGImages/<id>.jpg` + `SegmentationClassAug/<id>.png` (any number
of classes: `net.num_classes`), Cityscapes `leftImg8bit/...` + `gtFine/..._labelTrainIds.png`, and custom
(`dataset.type: custom` or `folder`) `images/<id>.jpg|jpeg|png` + `labels/<id>.png`, where an id may contain
sub-folders. Class names and palette come from `dataset.class_names` / `dataset.palette`, else the layout's defaults
(`class_names_for`, `palette_for_config`).

A sample is (RGB uint8 HxWx3 image, uint8 HxW label or None, sample id). Every problem with the user's data
(missing root/list/file, unreadable image, colour or out-of-range label, size mismatch) is a one-line UserError
naming the file.
"""

import os

import cv2
import numpy as np

from ms_semiseg.config import get, require
from ms_semiseg.data.palette import resolve_class_names, resolve_palette
from ms_semiseg.errors import UserError

KIND_BY_TYPE = {"pascal_semi": "pascal", "pascal": "pascal", "cityscapes_semi": "cityscapes",
                "cityscapes": "cityscapes", "custom": "custom", "folder": "custom"}
DEFAULT_NUM_CLASSES = {"pascal": 21, "cityscapes": 19}

# (image folder, label folder) of the layouts whose ids are file stems (the `split` command lists them).
LAYOUT_FOLDERS = {"pascal": ("JPEGImages", "SegmentationClassAug"), "custom": ("images", "labels")}
CUSTOM_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_CITY_PREFIX, _CITY_SUFFIX = "leftImg8bit/", "leftImg8bit.png"
# PIL (used upstream) ignores EXIF orientation; cv2 would rotate such JPEGs and misalign them with their labels.
_IMAGE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_JPEG_END = b"\xff\xd9"


def _voc_paths(root, line):
    """Bare id -> (sample id, image path, label path)."""
    return (line, os.path.join(root, "JPEGImages", line + ".jpg"),
            os.path.join(root, "SegmentationClassAug", line + ".png"))


def custom_image_path(root, sample_id):
    """images/<id> with the first extension found (lower then upper case); a `.{jpg,jpeg,png}` pattern when none
    exists, so that the missing-file error says which names were tried."""
    stem = os.path.join(root, LAYOUT_FOLDERS["custom"][0], sample_id)
    for extension in CUSTOM_IMAGE_EXTENSIONS + tuple(e.upper() for e in CUSTOM_IMAGE_EXTENSIONS):
        if os.path.isfile(stem + extension):
            return stem + extension
    return stem + ".{" + ",".join(e[1:] for e in CUSTOM_IMAGE_EXTENSIONS) + "}"


def _custom_id(line):
    """A list line is an id, optionally written with its image extension ('img_001' or 'img_001.jpg')."""
    stem, extension = os.path.splitext(line)
    return stem if extension.lower() in CUSTOM_IMAGE_EXTENSIONS else line


def _custom_paths(root, line):
    """<id> -> (id, images/<id>.<ext>, labels/<id>.png)."""
    sample_id = _custom_id(line)
    return (sample_id, custom_image_path(root, sample_id),
            os.path.join(root, LAYOUT_FOLDERS["custom"][1], sample_id + ".png"))


def _cityscapes_paths(root, line):
    """leftImg8bit/<split>/<city>/<name>_leftImg8bit.png -> (file stem, image path, gtFine trainIds path)."""
    label = "gtFine/" + line[len(_CITY_PREFIX):-len(_CITY_SUFFIX)] + "gtFine_labelTrainIds.png"
    stem = os.path.splitext(os.path.basename(line))[0]
    return stem, os.path.join(root, line), os.path.join(root, label)


def _check_line(kind, line, list_path, line_number):
    """Reject lines of another layout early: the path arithmetic would otherwise produce nonsense file names."""
    if kind == "pascal" and (len(line.split()) != 1 or "/" in line):
        expected = "a bare VOC id such as 2007_000033"
    elif kind == "cityscapes" and not (line.startswith(_CITY_PREFIX) and line.endswith("_" + _CITY_SUFFIX)):
        expected = "leftImg8bit/<split>/<city>/<name>_leftImg8bit.png"
    elif kind == "custom" and (len(line.split()) != 1 or os.path.isabs(line) or ".." in line.split("/")):
        expected = "an image id relative to images/, such as img_001 or site_a/img_001"
    else:
        return
    raise UserError(f"{list_path}: line {line_number} {line!r} is not a {kind} split line, expected {expected}")


_PATHS_BY_KIND = {"pascal": _voc_paths, "cityscapes": _cityscapes_paths, "custom": _custom_paths}


def read_split_list(list_path):
    """Non-blank, stripped lines of a split list, as (line number, line)."""
    if not os.path.isfile(list_path):
        raise UserError(f"{list_path}: split list not found, expected a text file with one sample per line")
    with open(list_path, encoding="utf-8") as handle:
        lines = [(number, line.strip()) for number, line in enumerate(handle, start=1) if line.strip()]
    if not lines:
        raise UserError(f"{list_path}: split list is empty, expected one sample per line")
    return lines


def derive_unlabeled_list(labeled_list):
    """U2PL convention: the unlabeled split sits beside the labeled one, 'labeled.txt' -> 'unlabeled.txt'."""
    folder, name = os.path.split(labeled_list)
    return os.path.join(folder, name.replace("labeled.txt", "unlabeled.txt"))


def _read_bytes(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found, expected it from the split list")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise UserError(f"{path}: empty file, expected an image")
    return data


def _looks_truncated_jpeg(data):
    """A JPEG cut short decodes without error in cv2 (grey fill); its end-of-image marker is then missing."""
    return data[:2].tobytes() == b"\xff\xd8" and _JPEG_END not in data[-64:].tobytes()


def read_image(path):
    """RGB uint8 HxWx3; UserError if missing, unreadable or truncated."""
    data = _read_bytes(path)
    image = cv2.imdecode(data, _IMAGE_FLAGS)
    if image is None or _looks_truncated_jpeg(data):
        raise UserError(f"{path}: cannot decode the image (corrupt or truncated), expected a readable JPEG/PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_label_values(path, label, num_classes, ignore_label):
    counts = np.bincount(label.ravel().astype(np.int64))
    allowed = np.zeros(max(counts.size, num_classes, ignore_label + 1), dtype=bool)
    allowed[:num_classes] = True
    allowed[ignore_label] = True
    bad = np.flatnonzero((counts > 0) & ~allowed[: counts.size])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise UserError(f"{path}: label values [{shown}] are outside 0..{num_classes - 1} and {ignore_label}, "
                        f"expected class indices (VOC: SegmentationClassAug; Cityscapes: *_labelTrainIds.png)")


def read_label(path, num_classes, ignore_label=255):
    """uint8 HxW class-index map; UserError for a colour/palette PNG or values outside the classes and ignore."""
    label = cv2.imdecode(_read_bytes(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError(f"{path}: cannot decode the label (corrupt or truncated), expected a single-channel PNG")
    if label.ndim == 3 and label.shape[2] > 1:
        raise UserError(f"{path}: looks like an RGB/color label ({label.shape[2]} channels; palette PNGs such as "
                        f"VOC SegmentationClass decode as colour), expected a single-channel class-index PNG")
    label = label.reshape(label.shape[:2])
    _check_label_values(path, label, num_classes, ignore_label)
    return label.astype(np.uint8)


class SegmentationDataset:
    """Random-access reader of one split: `kind` is 'pascal', 'cityscapes' or 'custom'."""

    def __init__(self, kind, data_root, list_path, num_classes, ignore_label=255, with_labels=True):
        if kind not in _PATHS_BY_KIND:
            raise ValueError(f"dataset kind {kind!r}: expected one of {sorted(_PATHS_BY_KIND)}")
        if not os.path.isdir(data_root):
            raise UserError(f"{data_root}: data root not found, expected the {kind} dataset folder")
        self.kind, self.data_root, self.list_path = kind, data_root, list_path
        self.num_classes, self.ignore_label, self.with_labels = num_classes, ignore_label, with_labels
        self.samples = []
        for number, line in read_split_list(list_path):
            _check_line(kind, line, list_path, number)
            self.samples.append(_PATHS_BY_KIND[kind](data_root, line))

    def __len__(self):
        return len(self.samples)

    def sample_paths(self, index):
        """(sample id, image path, label path) of sample `index`."""
        return self.samples[index]

    def _listed_files(self):
        for _, image_path, label_path in self.samples:
            yield image_path
            if self.with_labels:
                yield label_path

    def check_files(self):
        """Fail up front, before any training or evaluation, if a listed file is missing."""
        missing = [path for path in self._listed_files() if not os.path.isfile(path)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"{missing[0]}: file not found{more}, expected every sample of {self.list_path} "
                            f"under {self.data_root}")

    def __getitem__(self, index):
        """(RGB uint8 HxWx3, uint8 HxW label or None, sample id)."""
        sample_id, image_path, label_path = self.samples[index]
        image = read_image(image_path)
        if not self.with_labels:
            return image, None, sample_id
        label = read_label(label_path, self.num_classes, self.ignore_label)
        if label.shape != image.shape[:2]:
            raise UserError(f"{label_path}: label size {label.shape[0]}x{label.shape[1]} differs from image "
                            f"{image_path} size {image.shape[0]}x{image.shape[1]}, expected equal sizes")
        return image, label, sample_id


def dataset_kind(dataset_cfg):
    """'pascal', 'cityscapes' or 'custom' from `dataset.type`."""
    dataset_type = dataset_cfg.get("type")
    if dataset_type not in KIND_BY_TYPE:
        raise UserError(f"dataset.type: {dataset_type!r} is not supported, expected one of {sorted(KIND_BY_TYPE)}")
    return KIND_BY_TYPE[dataset_type]


def _split_value(dataset_cfg, split, key, override):
    if override is not None:
        return override
    value = (dataset_cfg.get(split) or {}).get(key)
    if not value:
        raise UserError(f"dataset.{split}.{key}: missing, expected a path")
    return value


def build_dataset(dataset_cfg, split="val", data_root_override=None, list_override=None, num_classes=None,
                  with_labels=True, check=True):
    """Reader for `dataset.<split>` of an upstream config (paths already resolved to absolute ones).

    num_classes (normally net.num_classes) defaults to 21 (VOC) / 19 (Cityscapes) / len(dataset.class_names);
    dataset.class_names and dataset.palette are checked against it here, before any work starts. `check`
    verifies every listed file exists.
    """
    kind = dataset_kind(dataset_cfg)
    num_classes = num_classes or _default_num_classes(dataset_cfg, kind)
    resolve_class_names(kind, num_classes, dataset_cfg.get("class_names"))
    resolve_palette(kind, num_classes, dataset_cfg.get("palette"))
    dataset = SegmentationDataset(
        kind,
        data_root=_split_value(dataset_cfg, split, "data_root", data_root_override),
        list_path=_split_value(dataset_cfg, split, "data_list", list_override),
        num_classes=num_classes,
        ignore_label=int(dataset_cfg.get("ignore_label", 255)),
        with_labels=with_labels,
    )
    if check:
        dataset.check_files()
    return dataset


def _default_num_classes(dataset_cfg, kind):
    if kind in DEFAULT_NUM_CLASSES:
        return DEFAULT_NUM_CLASSES[kind]
    names = dataset_cfg.get("class_names")
    if isinstance(names, (list, tuple)) and names:
        return len(names)
    raise UserError("net.num_classes: missing for a custom dataset, expected the number of classes "
                    "(or dataset.class_names)")


def _kind_and_num_classes(cfg):
    require(cfg, {"net.num_classes": int})
    return dataset_kind(get(cfg, "dataset") or {}), get(cfg, "net.num_classes")


def class_names_for(cfg):
    """Class names of a whole config: dataset.class_names (one per net.num_classes), else the VOC/Cityscapes
    names when the class count matches, else 'class 0', 'class 1', ...; UserError naming the key if invalid."""
    kind, num_classes = _kind_and_num_classes(cfg)
    return resolve_class_names(kind, num_classes, get(cfg, "dataset.class_names"))


def palette_for_config(cfg):
    """(256,3) uint8 RGB palette of a whole config: dataset.palette ([[r, g, b], ...], one per class), else the
    VOC/Cityscapes palette, else the VOC colormap; UserError naming the key if invalid."""
    kind, num_classes = _kind_and_num_classes(cfg)
    return resolve_palette(kind, num_classes, get(cfg, "dataset.palette"))
