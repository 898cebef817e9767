"""Bundled demo dataset: synthetic scenes written in the exact PASCAL VOC layout, small enough for a CPU demo.

    python -m ms_semiseg.demo.make_data --out data/demo [--num-images 1000] [--size 128] [--seed 0]

Why these defaults (docs/demo.md has the measurements behind them): 1000 images of 128x128 (800 train = 50 labeled
+ 750 unlabeled, 200 val) and 4 object classes (tree, house, car, fish) with 2 appearance modes each. The first
version (7 classes, clutter in object colours, photo backgrounds half the time) was too hard for a network trained
from scratch in a CPU budget: the baseline reached 18.8 mIoU and its pseudo-labels were almost all background, so
the unlabeled images could not help. This one is learnable from few labels (local colour/texture and part layout
separate the classes) while the labeled 50 do not cover the variation the unlabeled 750 show:
- every class has two modes with different part layouts and colour schemes (broadleaf/conifer trees,
  cottage/tower houses, sedan/truck cars in any hue, striped/angel fish), scale and rotation vary continuously;
- backgrounds are low-contrast crops of real photographs (scikit-learn's bundled china.jpg / flower.jpg), sky/ground
  gradients or stripe patterns; a few grey distractor shapes (discs, boxes, strokes) are background;
- objects occlude each other; the image gets mild blur and noise;
- labels carry a 255 band at instance borders, like VOC's ignore outline.

Output (everything written through atomic renames; meta.json is written last and marks a finished dataset):
    JPEGImages/<id>.jpg            RGB, quality 95
    SegmentationClassAug/<id>.png  single-channel class indices, 255 = ignore
    splits/{labeled,unlabeled,val}.txt, class_names.txt, objects.json (per-instance class/mode), meta.json
"""

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from ms_semiseg.errors import UserError

from .painter import CLASSES, IGNORE_LABEL, class_names_of, render_scene
from .source_task import SOURCE_CLASSES

# source: the pretraining task of ms_semiseg.demo.source_task, classes disjoint from the demo's
TASK_CLASSES = {"demo": CLASSES, "source": SOURCE_CLASSES}
TASKS = tuple(TASK_CLASSES)

GENERATOR = "ms_semiseg.demo.make_data"
FORMAT_VERSION = 3  # bump whenever the rendering changes, so stale datasets get regenerated
JPEG_QUALITY = 95
ID_PREFIX = "demo_"
IN_PROGRESS_MARKER = ".generating"

DEFAULT_NUM_IMAGES = 1000
DEFAULT_SIZE = 128
DEFAULT_LABELED_FRACTION = 1 / 16
MAX_DEFAULT_NUM_VAL = 200
MIN_SIZE = 32

# ----------------------------------------------------------------------------------------------------------
# Dataset on disk

def write_atomic(path, data):
    """Write bytes through a temporary sibling and a rename, so a crash never leaves a half-written file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def encode(extension, array, params=()):
    ok, buffer = cv2.imencode(extension, array, list(params))
    if not ok:
        raise RuntimeError(f"cv2.imencode({extension}) failed")
    return buffer.tobytes()


def write_sample(out, image_id, image_rgb, label):
    jpeg = encode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
    write_atomic(out / "JPEGImages" / f"{image_id}.jpg", jpeg)
    write_atomic(out / "SegmentationClassAug" / f"{image_id}.png", encode(".png", label))


def write_lines(path, lines):
    write_atomic(path, "".join(f"{line}\n" for line in lines).encode())


def image_ids(num_images):
    return [f"{ID_PREFIX}{index:06d}" for index in range(num_images)]


def split_ids(ids, classes_per_image, num_val, labeled_fraction, seed):
    """Random val / train split; the labeled subset first takes images that add an unseen class (so the few
    labels cover every class when they can), then random ones. Lists come back sorted."""
    order = [ids[i] for i in np.random.default_rng([seed, 1]).permutation(len(ids))]
    val, train = order[:num_val], order[num_val:]
    num_labeled = labeled_count(len(train), labeled_fraction)
    labeled, seen = [], set()
    for image_id in train:
        if len(labeled) < num_labeled and not classes_per_image[image_id] <= seen:
            labeled.append(image_id)
            seen |= classes_per_image[image_id]
    labeled += [image_id for image_id in train if image_id not in set(labeled)][:num_labeled - len(labeled)]
    unlabeled = sorted(set(train) - set(labeled))
    return {"labeled": sorted(labeled), "unlabeled": unlabeled, "val": sorted(val)}


def labeled_count(num_train, labeled_fraction):
    return max(1, int(round(num_train * labeled_fraction)))


def default_num_val(num_images):
    return max(1, min(MAX_DEFAULT_NUM_VAL, num_images // 5))


def requested_args(num_images, size, seed, labeled_fraction, num_val, task="demo"):
    """Validated generation arguments, in the form stored in meta.json (`task` only when not the demo's)."""
    num_val = default_num_val(num_images) if num_val is None else num_val
    checks = [
        (isinstance(size, int) and size >= MIN_SIZE, f"--size={size}: too small, expected an integer >= {MIN_SIZE}"),
        (isinstance(num_val, int) and num_val >= 1, f"--num-val={num_val}: expected an integer >= 1"),
        (isinstance(num_images, int) and num_images >= num_val + 2,
         f"--num-images={num_images}: leaves no labeled and unlabeled train images after {num_val} val images, "
         f"expected an integer >= {num_val + 2}"),
        (0 < labeled_fraction < 1, f"--labeled-fraction={labeled_fraction}: expected a fraction in (0, 1)"),
        (isinstance(seed, int) and seed >= 0, f"--seed={seed}: expected a non-negative integer"),
        (task in TASKS, f"--task={task}: expected one of {', '.join(TASKS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    num_train = num_images - num_val
    if labeled_count(num_train, labeled_fraction) >= num_train:
        raise UserError(f"--labeled-fraction={labeled_fraction}: labels all {num_train} train images, "
                        f"expected a fraction leaving unlabeled ones")
    args = {"num_images": num_images, "size": size, "seed": seed,
            "labeled_fraction": float(labeled_fraction), "num_val": num_val}
    if task == "demo":
        return args
    from .source_task import VERSION
    return dict(args, task=task, task_version=VERSION)


def read_meta(out):
    try:
        return json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(out, args):
    meta = read_meta(out)
    if not meta or meta.get("generator") != GENERATOR or meta.get("version") != FORMAT_VERSION:
        return False
    if meta.get("args") != args:
        return False
    expected = [out / "splits" / f"{name}.txt" for name in ("labeled", "unlabeled", "val")]
    for image_id in image_ids(args["num_images"]):
        expected += [out / "JPEGImages" / f"{image_id}.jpg", out / "SegmentationClassAug" / f"{image_id}.png"]
    return all(path.is_file() for path in expected)


def claim_output_dir(out):
    """Refuse a non-empty folder we did not create; otherwise invalidate its meta.json before rewriting."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out={out}: is a file, expected a folder")
    ours = (out / "meta.json").exists() or (out / IN_PROGRESS_MARKER).exists()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise UserError(f"--out={out}: folder is not empty and holds no demo dataset (no meta.json), "
                        f"expected an empty folder or one made by {GENERATOR}")
    for sub in ("JPEGImages", "SegmentationClassAug", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / IN_PROGRESS_MARKER).touch()
    (out / "meta.json").unlink(missing_ok=True)
    for leftover in out.rglob(".*.tmp"):  # temporaries of an interrupted run
        leftover.unlink()


def remove_stale_samples(out, ids):
    """Drop samples of an earlier, larger generation so the folder holds exactly this dataset."""
    keep = set(ids)
    for sub, suffix in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png")):
        for path in (out / sub).glob(f"{ID_PREFIX}*{suffix}"):
            if path.stem not in keep:
                path.unlink()


def make_dataset(out_dir, num_images=DEFAULT_NUM_IMAGES, size=DEFAULT_SIZE, seed=0,
                 labeled_fraction=DEFAULT_LABELED_FRACTION, num_val=None, task="demo"):
    """Generate (or reuse, when meta.json already matches) the demo dataset; returns the meta dict. The source
    task also writes splits/train.txt (labeled + unlabeled): pretraining uses every train label."""
    args = requested_args(num_images, size, seed, labeled_fraction, num_val, task)
    classes = TASK_CLASSES[task]
    names = class_names_of(classes)
    out = Path(out_dir)
    if is_up_to_date(out, args):
        return read_meta(out)
    claim_output_dir(out)
    ids = image_ids(num_images)
    objects, pixel_counts = {}, np.zeros(len(names), np.int64)
    for index, image_id in enumerate(ids):
        image, label, records = render_scene(np.random.default_rng([seed, 0, index]), size, classes)
        write_sample(out, image_id, image, label)
        objects[image_id] = records
        pixel_counts += np.bincount(label[label != IGNORE_LABEL], minlength=len(names))
    classes_per_image = {i: {r["class_id"] for r in objects[i] if r["visible_pixels"]} for i in ids}
    splits = split_ids(ids, classes_per_image, args["num_val"], labeled_fraction, seed)
    if task == "source":
        splits["train"] = sorted(splits["labeled"] + splits["unlabeled"])
    for name, lines in splits.items():
        write_lines(out / "splits" / f"{name}.txt", lines)
    write_lines(out / "class_names.txt", names)
    write_atomic(out / "objects.json", json.dumps(objects, separators=(",", ":")).encode())
    meta = build_meta(args, splits, objects, pixel_counts, classes)
    remove_stale_samples(out, ids)
    write_atomic(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    (out / IN_PROGRESS_MARKER).unlink(missing_ok=True)
    return meta


def build_meta(args, splits, objects, pixel_counts, classes=CLASSES):
    names = class_names_of(classes)
    modes_of = {name: list(modes) for name, (_, modes) in classes.items()}
    instances = {name: dict.fromkeys(modes, 0) for name, modes in modes_of.items()}
    for records in objects.values():
        for record in records:
            instances[record["class"]][record["mode"]] += bool(record["visible_pixels"])
    return {
        "generator": GENERATOR,
        "version": FORMAT_VERSION,
        "args": args,
        "classes": list(names),
        "num_classes": len(names),
        "ignore_label": IGNORE_LABEL,
        "image_size": [args["size"], args["size"]],
        "modes": modes_of,
        "counts": {"images": args["num_images"], "train": len(splits["labeled"]) + len(splits["unlabeled"]),
                   **{name: len(lines) for name, lines in splits.items()}},
        "visible_instances": instances,
        "class_pixel_fraction": {name: round(float(count) / max(1, int(pixel_counts.sum())), 4)
                                 for name, count in zip(names, pixel_counts)},
        "layout": {"images": "JPEGImages/<id>.jpg", "labels": "SegmentationClassAug/<id>.png",
                   "splits": {name: f"splits/{name}.txt" for name in splits},
                   "class_names": "class_names.txt", "objects": "objects.json"},
    }


def summary_line(out, meta, seconds, reused):
    counts = meta["counts"]
    how = "up to date, reused" if reused else f"generated in {seconds:.1f}s"
    return (f"demo dataset at {out}: {counts['images']} images {meta['args']['size']}x{meta['args']['size']}, "
            f"{meta['num_classes']} classes; train {counts['train']} = {counts['labeled']} labeled + "
            f"{counts['unlabeled']} unlabeled, val {counts['val']} ({how})")


def fraction(text):
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or fraction like 1/16") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ms_semiseg.demo.make_data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder, e.g. data/demo")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="train + val images")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="square image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-val", type=int, default=None,
                        help=f"held-out images (default: num_images // 5, at most {MAX_DEFAULT_NUM_VAL})")
    parser.add_argument("--labeled-fraction", type=fraction, default=DEFAULT_LABELED_FRACTION,
                        help="labeled share of train, e.g. 1/16")
    parser.add_argument("--task", choices=TASKS, default="demo",
                        help="demo (default) or source: the disjoint shapes task the demo backbone is pretrained on")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    try:
        reused = is_up_to_date(out, requested_args(args.num_images, args.size, args.seed,
                                                   args.labeled_fraction, args.num_val, args.task))
        meta = make_dataset(out, args.num_images, args.size, args.seed, args.labeled_fraction, args.num_val,
                            args.task)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return UserError.exit_code
    print(summary_line(out, meta, time.perf_counter() - start, reused))
    return 0


if __name__ == "__main__":
    sys.exit(main())
