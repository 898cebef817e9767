"""Dataset-level IoU accumulation, as U2PL's `intersectionAndUnion` summed over images (spec B.8)."""

import numpy as np

_EPS = 1e-10  # U2PL: iou = I / (U + 1e-10), so a class absent from both prediction and GT scores 0


class IoUAccumulator:
    """Accumulates per-class intersection and union over many (prediction, ground truth) pairs."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)

    def _histogram(self, values):
        """Counts of values 0..K-1; other values (the ignore index) are not counted."""
        values = values[values < self.num_classes]
        return np.bincount(values, minlength=self.num_classes)[: self.num_classes]

    def update(self, pred, gt):
        """Add one prediction/GT pair (same shape, integer class maps). Pixels where GT is ignored are skipped.

        U2PL sets pred := ignore there and histograms over bins 0..K-1, which drops those pixels the same way.
        """
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
        valid = gt != self.ignore_index
        pred, gt = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
        intersection = self._histogram(pred[pred == gt])
        self.intersection += intersection
        self.union += self._histogram(pred) + self._histogram(gt) - intersection

    def merge(self, intersection, union):
        """Add counts gathered elsewhere (e.g. other ranks)."""
        self.intersection += np.asarray(intersection, dtype=np.int64)
        self.union += np.asarray(union, dtype=np.int64)

    def iou(self):
        """Per-class IoU in [0, 1], float64 array of length num_classes."""
        return self.intersection / (self.union + _EPS)

    def miou(self):
        """Mean IoU over all classes (absent classes count as 0, as upstream)."""
        return float(np.mean(self.iou()))

    def format_table(self, class_names=None):
        """Per-class IoU (%) table ending with the mIoU line."""
        names = list(class_names) if class_names is not None else [f"class {i}" for i in range(self.num_classes)]
        width = max(len(name) for name in names + ["mIoU"])
        lines = [f"{'class':<{width}}  IoU (%)"]
        lines += [f"{name:<{width}}  {100 * value:7.2f}" for name, value in zip(names, self.iou())]
        lines.append(f"{'mIoU':<{width}}  {100 * self.miou():7.2f}")
        return "\n".join(lines)
