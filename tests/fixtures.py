"""Tiny deterministic VOC / Cityscapes trees in the real layouts, for tests of readers, loaders and CLIs.

Images are smooth colour gradients with noise; labels are background plus filled ellipses of random classes,
outlined with the ignore value 255 (like VOC object borders). Same arguments -> same bytes.
"""

import os

import cv2
import numpy as np

IGNORE = 255


def _random_image(rng, size):
    """RGB uint8: bilinear upsampling of a coarse random grid, plus a little noise."""
    height, width = size
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    noisy = smooth + rng.normal(0.0, 8.0, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _random_label(rng, size, num_classes, blobs=3):
    """uint8 class map: 0 background, `blobs` ellipses of classes 1..K-1 with a 255 outline."""
    height, width = size
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(blobs):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(2, max(3, width // 3))), int(rng.integers(2, max(3, height // 3))))
        cls = int(rng.integers(1, num_classes))
        cv2.ellipse(label, center, axes, 0, 0, 360, cls, thickness=-1)
        cv2.ellipse(label, center, axes, 0, 0, 360, IGNORE, thickness=1)
    return label


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")


def _write_lists(list_dir, lists):
    """{name: [lines]} -> {name: path of <list_dir>/<name>.txt}."""
    os.makedirs(list_dir, exist_ok=True)
    paths = {}
    for name, lines in lists.items():
        paths[name] = os.path.join(list_dir, f"{name}.txt")
        with open(paths[name], "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
    return paths


def _labeled_unlabeled(lines):
    half = max(1, len(lines) // 2)
    return {"labeled": lines[:half], "unlabeled": lines[half:]}


def make_voc_fixture(root, ids_sizes, num_classes=21, seed=0, lists=None, list_dir=None):
    """VOC tree: JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png and split lists of bare ids.

    ids_sizes: [(id, (h, w)), ...] or {id: (h, w)}. lists: {name: [ids]}; default labeled = first half,
    unlabeled = the rest, val = all. Lists go to list_dir (default <root>/splits) as <name>.txt.
    Returns {"root", "lists": {name: path}, "labels": {id: label array}}.
    """
    rng = np.random.default_rng(seed)
    items = list(dict(ids_sizes).items())
    labels = {}
    for sample_id, size in items:
        _write(os.path.join(root, "JPEGImages", f"{sample_id}.jpg"), _random_image(rng, size))
        labels[sample_id] = _random_label(rng, size, num_classes)
        _write(os.path.join(root, "SegmentationClassAug", f"{sample_id}.png"), labels[sample_id])
    ids = [sample_id for sample_id, _ in items]
    lists = lists if lists is not None else {**_labeled_unlabeled(ids), "val": ids}
    list_paths = _write_lists(list_dir or os.path.join(root, "splits"), lists)
    return {"root": root, "lists": list_paths, "labels": labels}


def cityscapes_line(name):
    """'train/aachen/aachen_000000_000019' -> the split-list line of that image."""
    return f"leftImg8bit/{name}_leftImg8bit.png"


def make_cityscapes_fixture(root, names, size, num_classes=19, seed=0, list_dir=None):
    """Cityscapes tree: leftImg8bit/<name>_leftImg8bit.png and gtFine/<name>_gtFine_labelTrainIds.png.

    names: ['<split>/<city>/<city>_<seq>_<frame>', ...]; size: (h, w) of every image (PNG, so lossless).
    Lists (default folder <root>/splits): one <split>.txt per split, plus labeled/unlabeled halves of train.
    Returns {"root", "lists": {name: path}, "images": {line: RGB array}, "labels": {line: label array}}.
    """
    rng = np.random.default_rng(seed)
    images, labels, by_split = {}, {}, {}
    for name in names:
        line = cityscapes_line(name)
        images[line] = _random_image(rng, size)
        labels[line] = _random_label(rng, size, num_classes)
        _write(os.path.join(root, line), images[line])
        _write(os.path.join(root, "gtFine", f"{name}_gtFine_labelTrainIds.png"), labels[line])
        by_split.setdefault(name.split("/")[0], []).append(line)
    lists = dict(by_split)
    if "train" in by_split:
        lists.update(_labeled_unlabeled(by_split["train"]))
    list_paths = _write_lists(list_dir or os.path.join(root, "splits"), lists)
    return {"root": root, "lists": list_paths, "images": images, "labels": labels}
