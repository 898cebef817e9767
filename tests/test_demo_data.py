"""The bundled demo dataset: VOC layout, split partition, label encoding, instance metadata, determinism, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ms_semiseg.demo.make_data import DEFAULT_LABELED_FRACTION, make_dataset
from ms_semiseg.demo.painter import CLASS_NAMES
from ms_semiseg.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES, SIZE, NUM_VAL = 40, 64, 8
NUM_CLASSES = 5  # background, tree, house, car, fish
assert len(CLASS_NAMES) == NUM_CLASSES


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    meta = make_dataset(root, num_images=NUM_IMAGES, size=SIZE, seed=0, num_val=NUM_VAL)
    return root, meta


def read_list(root, name):
    return (root / "splits" / f"{name}.txt").read_text().split()


def read_label(root, image_id):
    return cv2.imread(str(root / "SegmentationClassAug" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)


def all_ids(root):
    return sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))


def file_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_splits_partition_the_ids_with_the_requested_fraction(dataset):
    root, meta = dataset
    labeled, unlabeled, val = (read_list(root, name) for name in ("labeled", "unlabeled", "val"))
    train = set(labeled) | set(unlabeled)
    assert not set(labeled) & set(unlabeled)
    assert not train & set(val)
    assert sorted(train | set(val)) == all_ids(root)
    assert len(all_ids(root)) == NUM_IMAGES and len(val) == NUM_VAL
    assert len(labeled) == max(1, round((NUM_IMAGES - NUM_VAL) * DEFAULT_LABELED_FRACTION))  # 1/16 of 32 -> 2
    assert meta["counts"] == {"images": NUM_IMAGES, "train": NUM_IMAGES - NUM_VAL, "labeled": len(labeled),
                              "unlabeled": len(unlabeled), "val": NUM_VAL}
    assert json.loads((root / "meta.json").read_text()) == meta


def test_voc_layout_and_class_names(dataset):
    root, meta = dataset
    class_names = (root / "class_names.txt").read_text().split()
    assert class_names == meta["classes"] and len(class_names) == NUM_CLASSES and class_names[0] == "background"
    for image_id in all_ids(root):
        assert (root / "SegmentationClassAug" / f"{image_id}.png").is_file()
    assert not list(root.rglob("*.tmp")) and not (root / ".generating").exists()


def test_images_are_rgb_and_labels_single_channel_indices(dataset):
    root, _ = dataset
    seen = set()
    for image_id in all_ids(root):
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as image:
            assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        with Image.open(root / "SegmentationClassAug" / f"{image_id}.png") as label_file:
            assert label_file.mode == "L"  # loaders use convert("L"): a palette PNG would corrupt the indices
        label = read_label(root, image_id)
        assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
        seen |= set(np.unique(label).tolist())
    assert seen == set(range(NUM_CLASSES)) | {255}  # every class appears, nothing else but ignore


def test_class_borders_are_always_separated_by_ignore(dataset):
    root, _ = dataset
    for image_id in all_ids(root):
        label = read_label(root, image_id).astype(int)
        for a, b in ((label[:, 1:], label[:, :-1]), (label[1:], label[:-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), image_id


def test_objects_json_matches_labels(dataset):
    root, meta = dataset
    objects = json.loads((root / "objects.json").read_text())
    assert sorted(objects) == all_ids(root)
    for image_id, records in objects.items():
        label = read_label(root, image_id)
        visible = np.zeros(NUM_CLASSES, np.int64)
        for record in records:
            assert meta["classes"][record["class_id"]] == record["class"]
            visible[record["class_id"]] += record["visible_pixels"]
        counts = np.bincount(label[label != 255], minlength=NUM_CLASSES)
        np.testing.assert_array_equal(visible[1:], counts[1:], err_msg=image_id)


def test_every_class_shows_at_least_two_appearance_modes(dataset):
    root, meta = dataset
    objects = json.loads((root / "objects.json").read_text())
    modes_seen = {name: set() for name in meta["classes"][1:]}
    for records in objects.values():
        for record in records:
            assert record["mode"] in meta["modes"][record["class"]]
            if record["visible_pixels"]:
                modes_seen[record["class"]].add(record["mode"])
    assert all(len(modes) >= 2 for modes in modes_seen.values()), modes_seen
    assert all(len(modes) >= 2 for modes in meta["modes"].values())


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    """Identical bytes: the same generator and seed twice on one machine (same-machine determinism; the JPEG
    encoder's SIMD path could differ on another CPU, equally for both)."""
    args = dict(num_images=10, size=48, num_val=3)
    make_dataset(tmp_path / "a", seed=5, **args)
    make_dataset(tmp_path / "b", seed=5, **args)
    make_dataset(tmp_path / "c", seed=6, **args)
    first, second, other = (file_bytes(tmp_path / name) for name in "abc")
    assert first == second
    assert first.keys() == other.keys()
    jpegs = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != other[name] for name in jpegs)


def test_matching_meta_skips_regeneration_and_new_args_replace_the_dataset(tmp_path):
    make_dataset(tmp_path, num_images=12, size=40, seed=0, num_val=3)
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    make_dataset(tmp_path, num_images=12, size=40, seed=0, num_val=3)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamp

    meta = make_dataset(tmp_path, num_images=8, size=40, seed=0, num_val=3)
    assert meta["counts"]["images"] == 8 and len(all_ids(tmp_path)) == 8  # stale samples removed
    assert len(list((tmp_path / "SegmentationClassAug").glob("*.png"))) == 8


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(num_images=10, num_val=9), "--num-images=10"),
    (dict(num_images=10, size=8), "--size=8"),
    (dict(num_images=10, labeled_fraction=1.5), "--labeled-fraction=1.5"),
])
def test_bad_arguments_raise_user_error_naming_the_culprit(tmp_path, kwargs, culprit):
    with pytest.raises(UserError, match=culprit):
        make_dataset(tmp_path, **kwargs)


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a demo dataset")
    with pytest.raises(UserError, match="--out="):
        make_dataset(tmp_path, num_images=6, size=40, num_val=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ms_semiseg.demo.make_data", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_cli_generates_and_prints_one_summary_line(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("--out", str(out), "--num-images", "12", "--size", "40", "--seed", "1", "--num-val", "4",
                     "--labeled-fraction", "1/4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "2 labeled + 6 unlabeled, val 4" in lines[0]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["args"] == {"num_images": 12, "size": 40, "seed": 1, "labeled_fraction": 0.25, "num_val": 4}


def test_cli_user_error_exits_2_with_one_line(tmp_path):
    result = run_cli("--out", str(tmp_path / "demo"), "--num-images", "5", "--num-val", "4")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--num-images=5" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ the source task


def test_source_task_has_disjoint_classes_a_train_list_and_is_deterministic(tmp_path):
    """`--task source` (the backbone's pretraining data, ms_semiseg.demo.pretrain): 8 shapes, none of the demo's
    classes, every train image listed in splits/train.txt, byte-identical for a seed, and a different image set
    from the demo's for the same seed."""
    args = dict(num_images=24, size=48, seed=3, num_val=4, task="source")
    meta = make_dataset(tmp_path / "a", **args)
    make_dataset(tmp_path / "b", **args)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert meta["args"]["task"] == "source" and meta["num_classes"] == 9
    assert not set(meta["classes"][1:]) & set(CLASS_NAMES)
    root = tmp_path / "a"
    train = read_list(root, "train")
    assert train == sorted(read_list(root, "labeled") + read_list(root, "unlabeled")) and len(train) == 20
    seen = set()
    for image_id in all_ids(root):
        seen |= set(np.unique(read_label(root, image_id)).tolist())
    assert seen <= set(range(9)) | {255} and len(seen - {0, 255}) >= 6
    demo = make_dataset(tmp_path / "demo", num_images=24, size=48, seed=3, num_val=4)
    assert "task" not in demo["args"]  # the demo's meta (and so its reuse check) is unchanged by the new option
    assert (root / "JPEGImages" / "demo_000000.jpg").read_bytes() != \
        (tmp_path / "demo" / "JPEGImages" / "demo_000000.jpg").read_bytes()


def test_unknown_task_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ms_semiseg.demo.make_data", "--out", str(tmp_path / "x"),
                             "--task", "imagenet"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2 and "invalid choice: 'imagenet'" in result.stderr


def test_demo_scenes_are_plain_and_source_scenes_keep_their_clutter(monkeypatch):
    """The demo's scenes (format 4) have gradient backgrounds and no grey distractors; the source task, on which
    ckpt/demo/resnet18_source.ckpt was trained, keeps photo/stripe backgrounds and distractors."""
    from ms_semiseg.demo import painter
    from ms_semiseg.demo.make_data import PLAIN_SCENES
    from ms_semiseg.demo.source_task import SOURCE_CLASSES
    assert PLAIN_SCENES == {"demo": True, "source": False}
    calls = {"clutter": 0, "background fills": 0}
    clutter_parts, photo_crop, render_fill = painter.clutter_parts, painter.photo_crop, painter.render_fill

    def counting_clutter(rng):
        calls["clutter"] += 1
        return clutter_parts(rng)

    monkeypatch.setattr(painter, "clutter_parts", counting_clutter)
    for seed in range(30):
        painter.render_scene(np.random.default_rng(seed), 48, painter.CLASSES, plain=True)
    assert calls["clutter"] == 0
    for seed in range(30):
        painter.render_scene(np.random.default_rng(seed), 48, SOURCE_CLASSES, plain=False)
    assert calls["clutter"] > 0

    def counting(function):
        def wrapper(*args, **kwargs):
            calls["background fills"] += 1
            return function(*args, **kwargs)
        return wrapper

    # a background is a photo crop or a stripe fill unless it is the gradient: neither may run for plain scenes
    monkeypatch.setattr(painter, "photo_crop", counting(photo_crop))
    monkeypatch.setattr(painter, "render_fill", counting(render_fill))
    for seed in range(30):
        painter.background(np.random.default_rng(seed), 48, plain=True)
    assert calls["background fills"] == 0
    for seed in range(30):
        painter.background(np.random.default_rng(seed), 48)
    assert calls["background fills"] > 0
