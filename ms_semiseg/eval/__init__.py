"""Evaluation: mIoU accumulation and U2PL's whole-image / sliding-window / centre-crop protocols."""

from ms_semiseg.eval.metrics import IoUAccumulator
from ms_semiseg.eval.protocols import (
    center_crop,
    predict_with_flip,
    sliding_window,
    to_class_map,
    whole_image,
    window_starts,
)
