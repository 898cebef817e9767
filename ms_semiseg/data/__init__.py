"""Dataset readers, host-side transforms and palettes."""

from ms_semiseg.data.datasets import (
    DEFAULT_NUM_CLASSES,
    SegmentationDataset,
    build_dataset,
    dataset_kind,
    derive_unlabeled_list,
    read_image,
    read_label,
    read_split_list,
)
from ms_semiseg.data.palette import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
    class_names,
    colorize,
    palette_for,
    save_png_atomic,
)
from ms_semiseg.data.transforms import (
    SegTransform,
    build_transform,
    center_pad,
    crop,
    hflip,
    normalize,
    rand_resize,
    random_hflip,
    resize_bilinear,
    resize_bilinear_align_corners,
    resize_nearest,
)
