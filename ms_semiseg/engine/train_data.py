"""The training data's settings, validated once at start-up (`train_data(cfg)`, held by the plan as `plan.data`):
the `dataset` keys of the training split and the patch grid of `net.proto_head`. The pipeline (`pipeline.py`) and
PCR's prototype initialisation read this object, not the config.

The readers and transforms themselves are still built from the `dataset` section (`TrainData.section`), which
`ms_semiseg.data` parses: that is where the dataset formats live. The list and folder paths are resolved here
(relative to the config's folder) but a missing one is an error only where it is needed (`data_root` is not
needed with --data-root, the unlabeled list not without a semi-supervised phase)."""
from dataclasses import dataclass, field

from ..config import check, get, number, resolve_path
from ..data.datasets import derive_unlabeled_list
from ..data.transforms import build_transform, strong_view_enabled
from ..errors import UserError

DEFAULT_WORKERS = 2  # U2PL's `dataset.workers` default
DEFAULT_GRANULARITY = 32
ON_BAD_IMAGE = ("error", "skip")


@dataclass(frozen=True)
class TrainData:
    section: dict = field(repr=False, compare=False)  # `dataset`, for `build_dataset` / `build_transform`
    num_classes: int
    crop: tuple  # (h, w) of the training crop
    granularity: int  # G of PCR's G x G patch mask, None without `net.proto_head.patch_select`
    on_bad_image: str  # one of ON_BAD_IMAGE
    workers: int
    strong_view: bool  # `dataset.train.strong_view`: the unlabeled stream also yields a strong view
    mean: tuple
    std: tuple
    ignore_label: int
    root: str = None  # dataset.train.data_root, resolved; None when the config has none
    labeled_list: str = None  # dataset.train.data_list, resolved
    unlabeled_list_setting: str = None  # dataset.train.unlabeled_list, resolved; None: derived (unlabeled_list_path)
    val_root: str = None  # dataset.val.data_root, resolved
    val_list: str = None  # dataset.val.data_list, resolved


def train_data(cfg):
    """TrainData of the config; UserError naming the key when a value is not valid."""
    section = get(cfg, "dataset") or {}
    transform = build_transform(section, "train")
    return TrainData(
        section=section, num_classes=get(cfg, "net.num_classes"), crop=check_train_crop(cfg),
        granularity=patch_select_granularity(cfg), on_bad_image=on_bad_image(cfg),
        workers=positive_int(get(cfg, "dataset.workers", DEFAULT_WORKERS), "dataset.workers"),
        strong_view=strong_view_enabled(section), mean=tuple(transform.mean), std=tuple(transform.std),
        ignore_label=number(cfg, "dataset.ignore_label", 255, 0, kind=int),
        root=_path(cfg, "dataset.train.data_root"), labeled_list=_path(cfg, "dataset.train.data_list"),
        unlabeled_list_setting=_path(cfg, "dataset.train.unlabeled_list"),
        val_root=_path(cfg, "dataset.val.data_root"), val_list=_path(cfg, "dataset.val.data_list"))


def _path(cfg, key):
    return resolve_path(cfg, get(cfg, key)) or None


def required_path(value, key):
    if not value:
        raise UserError(f"{key}: missing, expected a path")
    return value


def positive_int(value, key):
    return check(key, value, not isinstance(value, bool) and isinstance(value, int) and value >= 1, "a positive int")


def labeled_list_path(data):
    return required_path(data.labeled_list, "dataset.train.data_list")


def unlabeled_list_path(data):
    """`dataset.train.unlabeled_list`, else U2PL's convention: labeled.txt -> unlabeled.txt beside it."""
    if data.unlabeled_list_setting:
        return data.unlabeled_list_setting
    labeled = labeled_list_path(data)
    unlabeled = derive_unlabeled_list(labeled)
    if unlabeled == labeled:
        raise UserError(f"dataset.train.data_list: {labeled} has no 'labeled.txt' in its name to derive the "
                        "unlabeled list from, expected .../labeled.txt or dataset.train.unlabeled_list to be set")
    return unlabeled


# ------------------------------------------------------------------------------------------ the key checks


def patch_select_granularity(cfg):
    """G of the proto head's G x G patch mask (spec C.2), or None when the config uses no patch mask."""
    proto_cfg = get(cfg, "net.proto_head")
    if not proto_cfg or not proto_cfg.get("patch_select", False):
        return None
    return int(proto_cfg.get("select_granularity", DEFAULT_GRANULARITY))


def check_train_crop(cfg):
    """(h, w) of the training crop; batches need one size, and the patch mask a square of at least G pixels."""
    transform = build_transform(get(cfg, "dataset") or {}, "train")
    if not transform.crop_size:
        raise UserError("dataset.train.crop: missing, expected {type: rand, size: [h, w]} (training batches need "
                        "one image size)")
    height, width = transform.crop_size
    granularity = patch_select_granularity(cfg)
    if granularity and height != width:
        raise UserError(f"dataset.train.crop.size: [{height}, {width}] is not square, expected h == w because "
                        "net.proto_head.patch_select samples one pixel per cell of a square "
                        f"{granularity}x{granularity} patch grid")
    if granularity and height < granularity:
        raise UserError(f"dataset.train.crop.size: {height} is smaller than net.proto_head.select_granularity "
                        f"{granularity}, expected a crop of at least {granularity} pixels")
    return height, width


def on_bad_image(cfg):
    """`dataset.on_bad_image`: 'error' (default) or 'skip' (see the pipeline's module notes)."""
    value = get(cfg, "dataset.on_bad_image", "error")
    if value not in ON_BAD_IMAGE:
        raise UserError(f"dataset.on_bad_image: {value!r} is not supported, expected error (stop with the file's "
                        "name) or skip (train without the sample, listed at the end)")
    return value
