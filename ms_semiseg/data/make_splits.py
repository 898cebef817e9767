"""`python -m ms_semiseg split`: labeled / unlabeled / val split lists for a dataset folder.

Ids are the images that have a label file: VOC layout `JPEGImages/<id>.jpg` + `SegmentationClassAug/<id>.png`,
custom layout `images/<id>.jpg|jpeg|png` + `labels/<id>.png` (ids may contain sub-folders).
- val: the ids of --val-list; else VOC's official `ImageSets/Segmentation/val.txt` when it is there (what U2PL
  evaluates on); else --val (default 0.1) of the ids, held out.
- labeled: --labeled of the remaining ids; unlabeled: the rest, plus the images without a label file when
  --with-unlabeled-images is given.
- Amounts: a fraction (1/16 or 0.0625) of n ids is ceil(fraction * n) ids, as in U2PL's published splits (1/16 of
  VOC's 10582 is 662, 1/8 of Cityscapes' 2975 is 372); an integer is a count.
- Selection: ids ranked by SHA-256 of "<seed>/<id>", so a split depends only on the seed and the ids (same lists on
  any machine or Python), a smaller labeled set of a seed lies inside a larger one, and adding images changes
  little. Val uses a key without the seed: every seed and fraction of a folder is evaluated on the same images.
"""
import hashlib
import math
import os
import re
from fractions import Fraction

from ms_semiseg.data.datasets import (
    CUSTOM_IMAGE_EXTENSIONS,
    KIND_BY_TYPE,
    LAYOUT_FOLDERS,
    SegmentationDataset,
)
from ms_semiseg.errors import UserError
from ms_semiseg.utils.atomic import ensure_writable_dir, write_text_atomic

LAYOUTS = {"voc": "pascal", "custom": "custom"}
IMAGE_EXTENSIONS = {"pascal": (".jpg",), "custom": CUSTOM_IMAGE_EXTENSIONS}
VOC_OFFICIAL_VAL = os.path.join("ImageSets", "Segmentation", "val.txt")
DEFAULT_VAL = "0.1"
VAL_KEY = "val"


def add_arguments(parser):
    parser.add_argument("--data-root", required=True, help="dataset folder (VOC or images/ + labels/ layout)")
    parser.add_argument("--labeled", required=True,
                        help="labeled share of the training ids: a fraction (1/16, 0.0625) or a count (92)")
    parser.add_argument("--seed", type=int, default=0, help="which labeled subset (default 0)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default=None,
                        help="voc: JPEGImages/ + SegmentationClassAug/; custom: images/ + labels/ "
                             "(default: detected from the folders)")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val", default=None,
                     help=f"held-out validation share, fraction or count (default {DEFAULT_VAL}, or VOC's "
                          f"{VOC_OFFICIAL_VAL} when present)")
    val.add_argument("--val-list", default=None, help="use the ids of this list as val instead of holding out")
    parser.add_argument("--with-unlabeled-images", action="store_true",
                        help="add images that have no label file to unlabeled.txt")
    parser.add_argument("--out", default=None,
                        help="output folder (default <data-root>/splits/<labeled count>[_seed<seed>])")


# --------------------------------------------------------------------------------------------------- amounts

def parse_amount(text, option):
    """'92' -> 92 (a count); '1/16' or '0.0625' -> Fraction(1, 16), which must lie strictly between 0 and 1."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{option} {text}: not an amount, expected a fraction such as 1/16 or 0.0625, "
                        "or a count such as 92") from None
    if not 0 < value < 1:
        raise UserError(f"{option} {text}: fraction out of range, expected 0 < fraction < 1 (or an integer count)")
    return value


def count_of(text, option, total, rest):
    """How many of `total` ids `text` asks for; at least one, and fewer than `total` so that `rest` is not empty."""
    amount = parse_amount(text, option)
    count = amount if isinstance(amount, int) else math.ceil(amount * total)
    if count < 1:
        raise UserError(f"{option} {text}: selects 0 ids, expected at least 1")
    if count >= total:
        raise UserError(f"{option} {text}: {count} of {total} ids leaves no {rest}, expected fewer than {total}")
    return count


# ------------------------------------------------------------------------------------------------ listing ids

def detect_layout(root, layout=None):
    """Dataset kind ('pascal' or 'custom') of `root`: the one asked for (its folders must exist) or the one found."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: data root not found, expected a dataset folder")
    kinds = [LAYOUTS[layout]] if layout else list(LAYOUT_FOLDERS)
    for kind in kinds:
        missing = [f for f in LAYOUT_FOLDERS[kind] if not os.path.isdir(os.path.join(root, f))]
        if not missing:
            return kind
        if layout:
            raise UserError(f"{os.path.join(root, missing[0])}: folder not found, expected the {layout} layout "
                            f"{' + '.join(f + '/' for f in LAYOUT_FOLDERS[kind])}")
    raise UserError(f"{root}: neither JPEGImages/ + SegmentationClassAug/ (VOC) nor images/ + labels/ (custom) "
                    "found, expected one of these layouts")


def _image_ids(folder, extensions, recursive):
    """{id: path} of the images under `folder`; ids are '/'-separated paths without extension."""
    ids = {}
    for current, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if recursive and not d.startswith("."))
        for name in sorted(files):
            stem, extension = os.path.splitext(name)
            if name.startswith(".") or extension.lower() not in extensions:
                continue
            path = os.path.join(current, name)
            sample_id = os.path.relpath(os.path.join(current, stem), folder).replace(os.sep, "/")
            if len(sample_id.split()) != 1:
                raise UserError(f"{path}: file name contains whitespace, expected ids without spaces "
                                "(a split list holds one id per line)")
            if sample_id in ids:
                raise UserError(f"{path}: same id as {ids[sample_id]}, expected one image per id")
            ids[sample_id] = path
    return ids


def list_ids(root, kind):
    """(sorted ids with a label, sorted ids without one)."""
    image_folder, label_folder = (os.path.join(root, f) for f in LAYOUT_FOLDERS[kind])
    images = _image_ids(image_folder, IMAGE_EXTENSIONS[kind], recursive=kind == "custom")
    labeled = sorted(i for i in images if os.path.isfile(os.path.join(label_folder, i + ".png")))
    if not labeled:
        extensions = "|".join(e[1:] for e in IMAGE_EXTENSIONS[kind])
        raise UserError(f"{image_folder}: no images with a label ({len(images)} images, none with a "
                        f"{label_folder}/<id>.png), expected <id>.{extensions} files with labels")
    return labeled, sorted(set(images) - set(labeled))


def read_id_list(root, kind, list_path, available):
    """Ids of a split list (checked like a dataset list); each must be an image with a label."""
    # the reader parses and checks the lines; it reads no image, so the class count does not matter
    ids = [sample[0] for sample in SegmentationDataset(kind, root, list_path, num_classes=1).samples]
    missing = [i for i in ids if i not in available]
    if missing:
        raise UserError(f"{list_path}: {missing[0]!r} ({len(missing)} of {len(ids)} ids) has no image with a label "
                        f"under {root}, expected ids of labeled images")
    return sorted(set(ids))


# ------------------------------------------------------------------------------------------------- selecting

def ranked(ids, key):
    """ids ordered by SHA-256 of '<key>/<id>': a seeded order that is the same everywhere."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{key}/{i}".encode("utf-8")).hexdigest())


def choose_val(args, root, kind, ids):
    """(val ids, how they were chosen)."""
    official = os.path.join(root, VOC_OFFICIAL_VAL)
    if args.val_list or (args.val is None and kind == "pascal" and os.path.isfile(official)):
        list_path = os.path.abspath(args.val_list or official)
        return read_id_list(root, kind, list_path, set(ids)), f"from {list_path}"
    text = args.val if args.val is not None else DEFAULT_VAL
    count = count_of(text, "--val", len(ids), "ids for training")
    return sorted(ranked(ids, VAL_KEY)[:count]), f"held out: {text} of {len(ids)}"


def make_splits(args):
    """{'labeled', 'unlabeled', 'val': sorted ids} plus a description of each, before anything is written."""
    root = os.path.abspath(os.path.expanduser(args.data_root))
    kind = detect_layout(root, args.layout)
    ids, without_label = list_ids(root, kind)
    val, val_source = choose_val(args, root, kind, ids)
    pool = sorted(set(ids) - set(val))
    if not pool:
        raise UserError(f"val {val_source}: holds every labeled image, expected some left for training")
    count = count_of(args.labeled, "--labeled", len(pool), "unlabeled ids")
    labeled = sorted(ranked(pool, args.seed)[:count])
    unlabeled = sorted(set(pool) - set(labeled) | set(without_label if args.with_unlabeled_images else ()))
    return {"root": root, "kind": kind, "with_label": ids, "without_label": without_label,
            "lists": {"labeled": labeled, "unlabeled": unlabeled, "val": val},
            "notes": {"labeled": f"{args.labeled} of {len(pool)}, seed {args.seed}",
                      "unlabeled": "+ images without labels" if args.with_unlabeled_images and without_label else "",
                      "val": val_source}}


def output_folder(args, root, labeled_count):
    if args.out:
        return os.path.abspath(os.path.expanduser(args.out))
    return os.path.join(root, "splits", str(labeled_count) + (f"_seed{args.seed}" if args.seed else ""))


def run(args):
    split = make_splits(args)
    out = output_folder(args, split["root"], len(split["lists"]["labeled"]))
    ensure_writable_dir(out, "--out folder")
    paths = {}
    for name, ids in split["lists"].items():
        paths[name] = os.path.join(out, f"{name}.txt")
        write_text_atomic(paths[name], "".join(i + "\n" for i in ids))
    report(split, paths)
    return 0


def report(split, paths):
    kind, without_label = split["kind"], len(split["without_label"])
    layout = next(name for name, value in LAYOUTS.items() if value == kind)
    print(f"{split['root']}: {layout} layout, {len(split['with_label'])} images with labels, {without_label} "
          "without")
    if without_label and not split["notes"]["unlabeled"]:
        print(f"  the {without_label} image(s) without a label file are not listed (--with-unlabeled-images adds "
              "them to unlabeled.txt)")
    for name in ("labeled", "unlabeled", "val"):
        note = f"  ({split['notes'][name]})" if split["notes"][name] else ""
        print(f"  {name:<9} {len(split['lists'][name]):>6} -> {paths[name]}{note}")
    dataset_type = next(t for t, k in KIND_BY_TYPE.items() if k == kind)
    print("in config.yaml (unlabeled.txt is found beside labeled.txt):\n"
          f"  dataset:\n    type: {dataset_type}\n"
          f"    train: {{data_root: {split['root']}, data_list: {paths['labeled']}}}\n"
          f"    val: {{data_root: {split['root']}, data_list: {paths['val']}}}")
