"""Where a model's pixels go: the confusion matrix of an evaluation's saved predictions against the ground truth,
rows normalised (each true class's pixels, in % per predicted class), and per class the share of its pixels
called background and of background's called objects. IoU says how much is wrong; this says into which class.

    python bench/confusion.py outputs/demo/ours/eval/gray --data-root data/demo [--classes background tree ...]

The predictions are `ms_semiseg eval --save-dir`'s label-index maps (`<work dir>/eval/gray/<id>.png`, as the demo
writes them); each is scored against `<data-root>/SegmentationClassAug/<id>.png` (the VOC layout), ignore pixels
(255) left out. Class names default to `<data-root>/class_names.txt` when it exists (the demo's datasets).
"""
import argparse
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from ms_semiseg.data.datasets import read_label  # noqa: E402  (clear errors for colour or out-of-range maps)
from ms_semiseg.errors import UserError  # noqa: E402


class Confusion:
    """counts[t, p]: pixels of true class t predicted p, over every update; 255 in the truth is left out."""

    def __init__(self, num_classes, ignore_label=255):
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.counts = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction, label):
        kept = label != self.ignore_label
        pairs = label[kept].astype(np.int64) * self.num_classes + prediction[kept].astype(np.int64)
        self.counts += np.bincount(pairs, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)

    def row_percent(self):
        """Each true class's row as % of its pixels (a class with no pixel: zeros)."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return 100.0 * self.counts / np.maximum(totals, 1)

    def background_shares(self, background=0):
        """(% of each object class's pixels predicted background, % of background's pixels predicted an object)."""
        rows = self.row_percent()
        objects = [c for c in range(self.num_classes) if c != background]
        return {c: rows[c, background] for c in objects}, 100.0 - rows[background, background]


def confusion_of(pred_dir, data_root, num_classes):
    names = sorted(f for f in os.listdir(pred_dir) if f.endswith(".png")) if os.path.isdir(pred_dir) else []
    if not names:
        raise UserError(f"{pred_dir}: no .png prediction found, expected the label-index maps of `ms_semiseg eval "
                        f"--save-dir` (<work dir>/eval/gray)")
    confusion = Confusion(num_classes)
    for name in names:
        truth_path = os.path.join(data_root, "SegmentationClassAug", name)
        if not os.path.isfile(truth_path):
            raise UserError(f"{truth_path}: not found, expected the ground truth of the prediction {name} "
                            f"(VOC layout: <data-root>/SegmentationClassAug/<id>.png)")
        prediction, label = read_label(os.path.join(pred_dir, name), num_classes), read_label(truth_path, num_classes)
        if prediction.shape != label.shape:
            raise UserError(f"{os.path.join(pred_dir, name)}: {prediction.shape[1]}x{prediction.shape[0]} pixels, "
                            f"expected the size of its ground truth ({label.shape[1]}x{label.shape[0]})")
        confusion.update(prediction, label)
    return confusion, len(names)


def class_names(args):
    if args.classes:
        return args.classes
    path = os.path.join(args.data_root, "class_names.txt")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found; pass --classes (the dataset's class names, background first)")
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def table(confusion, names):
    rows = confusion.row_percent()
    to_background, false_objects = confusion.background_shares()
    header = ["true \\ predicted %"] + names + ["called background %"]
    lines = [header]
    for c, name in enumerate(names):
        shown = f"{to_background[c]:.1f}" if c in to_background else f"(objects: {false_objects:.1f})"
        lines.append([name] + [f"{v:.1f}" for v in rows[c]] + [shown])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred_dir", help="label-index predictions (<work dir>/eval/gray)")
    parser.add_argument("--data-root", default=os.path.join(REPO_ROOT, "data", "demo"))
    parser.add_argument("--classes", nargs="+",
                        help="class names, background first (default <data-root>/class_names.txt)")
    args = parser.parse_args()
    try:
        names = class_names(args)
        confusion, count = confusion_of(args.pred_dir, args.data_root, len(names))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.pred_dir}: {count} images against {os.path.join(args.data_root, 'SegmentationClassAug')}")
    print(table(confusion, names))


if __name__ == "__main__":
    main()
