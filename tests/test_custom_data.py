"""Custom datasets (plain images/ + labels/ layout, VOC layout with 3 classes), class names and palettes from the
config, the `split` command, and a 3-class custom dataset taken from a folder to a trained and evaluated model."""
import argparse
import hashlib
import json
import os
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from ms_semiseg.config import load_config
from ms_semiseg.data import VOC_CLASSES, VOC_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, build_dataset
from ms_semiseg.data import make_splits
from ms_semiseg.data.datasets import class_names_for, palette_for_config
from ms_semiseg.errors import UserError
from tests.fixtures import make_voc_fixture
from tests.helpers import assert_user_error, point_at_data, run_module, tiny_config, write_config

NAMES = ["sky", "grass", "cow"]
COLOURS = [[10, 20, 30], [0, 255, 0], [200, 100, 50]]


# ---------------------------------------------------------------------------------------------- test data

def write_image(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, rgb[..., ::-1] if rgb.ndim == 3 else rgb)


def make_custom_dataset(root, ids, num_classes=3, size=(20, 24), jpeg_ids=(), unlabeled_ids=(), seed=0):
    """images/<id>.png (or .jpg for jpeg_ids) + labels/<id>.png: vertical stripes of every class, a top row of
    255 (ignore). unlabeled_ids get an image only. Returns {id: (image, label or None)}."""
    rng = np.random.default_rng(seed)
    height, width = size
    stripes = (np.arange(width) * num_classes // width).astype(np.uint8)
    written = {}
    for sample_id in list(ids) + list(unlabeled_ids):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        extension = ".jpg" if sample_id in jpeg_ids else ".png"
        write_image(os.path.join(root, "images", sample_id + extension), image)
        label = None
        if sample_id not in unlabeled_ids:
            label = np.repeat(stripes[None], height, axis=0)
            label[0] = 255
            write_image(os.path.join(root, "labels", sample_id + ".png"), label)
        written[sample_id] = (image, label)
    return written


def write_list(path, lines):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return str(path)


def custom_cfg(root, list_path, **dataset_keys):
    """A whole config (net + dataset) for a custom dataset; dataset_keys adds class_names / palette."""
    return {"net": {"num_classes": 3}, "dataset": {"type": "custom", **dataset_keys,
                                                   "val": {"data_root": str(root), "data_list": list_path}}}


@pytest.fixture
def custom(tmp_path):
    root = tmp_path / "mydata"
    ids = ["img_000", "img_001", "site_b/img_002"]
    written = make_custom_dataset(str(root), ids, jpeg_ids={"img_001"})
    return {"root": root, "ids": ids, "written": written, "list": write_list(tmp_path / "val.txt", ids)}


# ---------------------------------------------------------------------------------------------- custom layout

def test_custom_dataset_reads_images_labels_names_and_palette(custom):
    cfg = custom_cfg(custom["root"], custom["list"], class_names=NAMES, palette=COLOURS)
    dataset = build_dataset(cfg["dataset"], "val", num_classes=3)
    assert len(dataset) == 3
    for index, sample_id in enumerate(custom["ids"]):
        image, label, got_id = dataset[index]
        written_image, written_label = custom["written"][sample_id]
        image_path = dataset.sample_paths(index)[1]
        assert got_id == sample_id and image_path.endswith(sample_id + (".jpg" if sample_id == "img_001" else ".png"))
        # PNG is lossless: the written pixels; JPEG: what PIL (upstream's reader) decodes
        expected = np.asarray(Image.open(image_path).convert("RGB")) if sample_id == "img_001" else written_image
        np.testing.assert_array_equal(image, expected)
        np.testing.assert_array_equal(label, written_label)
        assert set(np.unique(label)) == {0, 1, 2, 255}
    assert class_names_for(cfg) == tuple(NAMES)
    palette = palette_for_config(cfg)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette[:3], COLOURS)
    assert not palette[3:].any()


def test_custom_type_aliases_and_list_lines(custom, tmp_path):
    # 'folder' is the same layout; a list line may carry the image extension
    lines = write_list(tmp_path / "with_ext.txt", ["img_001.jpg", "site_b/img_002.png"])
    dataset = build_dataset({"type": "folder", "val": {"data_root": str(custom["root"]), "data_list": lines}},
                            "val", num_classes=3)
    assert [dataset[i][2] for i in range(len(dataset))] == ["img_001", "site_b/img_002"]


@pytest.mark.parametrize("line", ["img_000 labels/img_000.png", "/abs/img_000", "../img_000"])
def test_custom_list_line_of_wrong_form(custom, tmp_path, line):
    bad = write_list(tmp_path / "bad.txt", ["img_000", line])
    with pytest.raises(UserError, match="line 2") as error:
        build_dataset({"type": "custom", "val": {"data_root": str(custom["root"]), "data_list": bad}}, "val",
                      num_classes=3)
    assert "image id relative to images/" in str(error.value)


def test_custom_missing_image_names_the_extensions_tried(custom, tmp_path):
    listed = write_list(tmp_path / "missing.txt", ["img_000", "nope"])
    with pytest.raises(UserError, match=r"images/nope\.\{jpg,jpeg,png\}: file not found"):
        build_dataset({"type": "custom", "val": {"data_root": str(custom["root"]), "data_list": listed}}, "val",
                      num_classes=3)


def test_custom_label_value_outside_classes(custom):
    label = custom["written"]["img_000"][1].copy()
    label[5, 5] = 3  # a 4th class in a 3-class dataset
    write_image(str(custom["root"] / "labels" / "img_000.png"), label)
    dataset = build_dataset(custom_cfg(custom["root"], custom["list"])["dataset"], "val", num_classes=3)
    with pytest.raises(UserError, match=r"label values \[3\] are outside 0..2 and 255"):
        dataset[0]


def test_custom_num_classes_from_class_names_or_error(custom):
    dataset_cfg = custom_cfg(custom["root"], custom["list"], class_names=NAMES)["dataset"]
    assert build_dataset(dataset_cfg, "val").num_classes == 3
    del dataset_cfg["class_names"]
    with pytest.raises(UserError, match="net.num_classes: missing for a custom dataset"):
        build_dataset(dataset_cfg, "val")


# ---------------------------------------------------------------------------------------------- names, palettes

def test_default_names_and_palettes():
    def cfg(dataset_type, num_classes):
        return {"net": {"num_classes": num_classes}, "dataset": {"type": dataset_type}}
    assert class_names_for(cfg("pascal_semi", 21)) == VOC_CLASSES
    assert palette_for_config(cfg("pascal_semi", 21)) is VOC_PALETTE
    assert class_names_for(cfg("cityscapes_semi", 19)) == CITYSCAPES_CLASSES
    assert palette_for_config(cfg("cityscapes_semi", 19)) is CITYSCAPES_PALETTE
    # other class counts: VOC's names would be wrong and Cityscapes has no colour beyond class 18
    assert class_names_for(cfg("pascal_semi", 3)) == ("class 0", "class 1", "class 2")
    assert palette_for_config(cfg("cityscapes_semi", 20)) is VOC_PALETTE
    assert class_names_for(cfg("custom", 2)) == ("class 0", "class 1")
    assert palette_for_config(cfg("custom", 2)) is VOC_PALETTE


@pytest.mark.parametrize("key, value, message", [
    ("class_names", ["sky", "grass"], "dataset.class_names: 2 entries but net.num_classes is 3"),
    ("class_names", "sky grass cow", "dataset.class_names: 'sky grass cow' is not a list"),
    ("class_names", ["sky", True, "cow"], r"dataset.class_names\[1\]: True is not a name"),
    ("class_names", ["sky", "cow", "cow"], "dataset.class_names: 'cow' appears more than once"),
    ("palette", COLOURS[:2] + COLOURS, "dataset.palette: 5 entries but net.num_classes is 3"),
    ("palette", [[0, 0, 0], [0, 256, 0], [1, 2, 3]], r"dataset.palette\[1\]: \[0, 256, 0\] is not a colour"),
    ("palette", [[0, 0, 0], [0, 0], [1, 2, 3]], r"dataset.palette\[1\]: \[0, 0\] is not a colour"),
])
def test_bad_names_or_palette_are_user_errors_up_front(custom, key, value, message):
    cfg = custom_cfg(custom["root"], custom["list"], **{key: value})
    helper = class_names_for if key == "class_names" else palette_for_config
    with pytest.raises(UserError, match=message):
        helper(cfg)
    with pytest.raises(UserError, match=message):  # before training or evaluation reads a single image
        build_dataset(cfg["dataset"], "val", num_classes=3)


def test_names_and_palette_settable_with_opts(tmp_path):
    config = write_config(tiny_config(num_classes=3), str(tmp_path))
    cfg = load_config(config, ["dataset.type=custom", "dataset.class_names=[sky, grass, cow]",
                               "dataset.palette=[[10, 20, 30], [0, 255, 0], [200, 100, 50]]"])
    assert class_names_for(cfg) == tuple(NAMES)
    np.testing.assert_array_equal(palette_for_config(cfg)[:3], COLOURS)


# ---------------------------------------------------------------------------------------------- VOC layout, 3 classes

def test_voc_layout_with_three_classes(tmp_path):
    ids = {"a_000": (21, 17), "a_001": (18, 25)}
    voc = make_voc_fixture(str(tmp_path / "voc3"), ids, num_classes=3)
    cfg = {"net": {"num_classes": 3},
           "dataset": {"type": "pascal_semi", "val": {"data_root": voc["root"], "data_list": voc["lists"]["val"]}}}
    dataset = build_dataset(cfg["dataset"], "val", num_classes=3)
    for index, sample_id in enumerate(ids):
        _, label, _ = dataset[index]
        np.testing.assert_array_equal(label, voc["labels"][sample_id])
        assert set(np.unique(label)) <= {0, 1, 2, 255}
    assert class_names_for(cfg) == ("class 0", "class 1", "class 2")
    # the same files read as 2 classes: class 2 is out of range
    label_values = set(np.unique(voc["labels"]["a_000"])) | set(np.unique(voc["labels"]["a_001"]))
    assert 2 in label_values
    two_class = build_dataset(cfg["dataset"], "val", num_classes=2)
    with pytest.raises(UserError, match=r"label values \[2\] are outside 0..1"):
        [two_class[i] for i in range(len(two_class))]


# ---------------------------------------------------------------------------------------------- split command

def split_args(*argv):
    parser = argparse.ArgumentParser()
    make_splits.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def run_split(capsys, *argv):
    """Runs `split` in-process; returns ({name: [ids]}, stdout)."""
    args = split_args(*argv)
    assert make_splits.run(args) == 0
    out = capsys.readouterr().out
    folder = args.out
    lists = {}
    for name in ("labeled", "unlabeled", "val"):
        with open(os.path.join(folder, f"{name}.txt"), encoding="utf-8") as handle:
            lists[name] = handle.read().splitlines()
    return lists, out


@pytest.fixture
def folder(tmp_path):
    """40 labeled images (10 in a sub-folder, half JPEG), 3 images without labels."""
    ids = [f"{'sub/' if i % 4 == 0 else ''}im{i:02d}" for i in range(40)]
    root = tmp_path / "ds"
    make_custom_dataset(str(root), ids, size=(6, 6), jpeg_ids=set(ids[::2]), unlabeled_ids=["u0", "u1", "sub/u2"])
    return {"root": root, "ids": ids, "out": tmp_path / "splits"}


@pytest.mark.parametrize("amount, total, expected", [
    ("1/16", 10582, 662), ("1/8", 10582, 1323), ("1/4", 10582, 2646), ("1/2", 10582, 5291),  # U2PL VOC blender
    ("1/16", 2975, 186), ("1/8", 2975, 372), ("1/4", 2975, 744), ("1/2", 2975, 1488),  # U2PL Cityscapes
    ("0.0625", 10582, 662), ("92", 1464, 92), ("0.1", 37, 4),
])
def test_amounts_match_u2pl_split_sizes(amount, total, expected):
    assert make_splits.count_of(amount, "--labeled", total, "unlabeled ids") == expected


def test_split_lists_are_disjoint_and_cover_the_labeled_images(folder, capsys):
    lists, out = run_split(capsys, "--data-root", folder["root"], "--labeled", "1/8", "--out", folder["out"])
    labeled, unlabeled, val = (set(lists[n]) for n in ("labeled", "unlabeled", "val"))
    assert len(val) == 4 and len(labeled) == 5 and len(unlabeled) == 31  # ceil(0.1 * 40); ceil(36 / 8)
    assert not (labeled & unlabeled) and not (labeled & val) and not (unlabeled & val)
    assert labeled | unlabeled | val == set(folder["ids"])  # the images without labels are left out
    assert lists["labeled"] == sorted(lists["labeled"])
    assert "custom layout, 40 images with labels, 3 without" in out
    for name, count in (("labeled", 5), ("unlabeled", 31), ("val", 4)):
        assert f"{name:<9} {count:>6} -> {folder['out'] / (name + '.txt')}" in out


def test_split_amount_forms_agree_and_counts(folder, capsys):
    by_fraction, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "1/4", "--out", folder["out"])
    by_decimal, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "0.25", "--out", folder["out"])
    by_count, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "9", "--out", folder["out"])
    assert by_fraction == by_decimal == by_count  # ceil(36 / 4) = 9
    counted, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "7", "--val", "10",
                           "--out", folder["out"])
    assert (len(counted["labeled"]), len(counted["unlabeled"]), len(counted["val"])) == (7, 23, 10)


def test_split_is_deterministic_seeded_nested_and_keeps_val(folder, capsys):
    def split(seed, amount):
        return run_split(capsys, "--data-root", folder["root"], "--labeled", amount, "--seed", seed,
                         "--out", folder["out"])[0]
    first, again = split(0, "1/8"), split(0, "1/8")
    assert first == again
    other_seed = split(1, "1/8")
    assert other_seed["labeled"] != first["labeled"] and other_seed["val"] == first["val"]
    larger = split(0, "1/2")
    assert set(first["labeled"]) < set(larger["labeled"]) and larger["val"] == first["val"]


def sha256_first(ids, key, count):
    """Reference selection: the `count` ids with the smallest SHA-256 of '<key>/<id>', sorted."""
    return sorted(sorted(ids, key=lambda i: hashlib.sha256(f"{key}/{i}".encode()).hexdigest())[:count])


def test_split_reference_ranking(folder, capsys):
    """The labeled ids are the first ids of the pool ranked by SHA-256 of '<seed>/<id>' (module notes)."""
    lists, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "3", "--seed", "5",
                         "--out", folder["out"])
    pool = sorted(set(folder["ids"]) - set(lists["val"]))
    assert lists["labeled"] == sha256_first(pool, "5", 3)


def test_split_with_unlabeled_images_and_val_list(folder, tmp_path, capsys):
    val_list = write_list(tmp_path / "my_val.txt", folder["ids"][:6])
    lists, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "4", "--val-list", val_list,
                         "--with-unlabeled-images", "--out", folder["out"])
    assert lists["val"] == sorted(folder["ids"][:6]) and len(lists["labeled"]) == 4
    assert {"u0", "u1", "sub/u2"} <= set(lists["unlabeled"]) and len(lists["unlabeled"]) == 30 + 3
    assert not {"u0", "u1", "sub/u2"} & set(lists["labeled"] + lists["val"])


def test_split_default_output_folder(folder, capsys):
    for seed, name in ((0, "5"), (2, "5_seed2")):
        assert make_splits.run(split_args("--data-root", folder["root"], "--labeled", "5", "--seed", seed)) == 0
        assert sorted(os.listdir(folder["root"] / "splits" / name)) == ["labeled.txt", "unlabeled.txt", "val.txt"]
    capsys.readouterr()


def test_split_voc_layout_uses_the_official_val_list(tmp_path, capsys):
    ids = [f"2007_{i:06d}" for i in range(12)]
    voc = make_voc_fixture(str(tmp_path / "VOC2012"), {i: (8, 8) for i in ids}, lists={})
    os.remove(os.path.join(voc["root"], "SegmentationClassAug", ids[-1] + ".png"))  # detection-only image
    official = os.path.join(voc["root"], "ImageSets", "Segmentation")
    os.makedirs(official)
    write_list(os.path.join(official, "val.txt"), ids[:3])
    lists, out = run_split(capsys, "--data-root", voc["root"], "--labeled", "1/2", "--out", tmp_path / "o")
    assert lists["val"] == ids[:3] and len(lists["labeled"]) == 4 and len(lists["unlabeled"]) == 4
    assert ids[-1] not in lists["unlabeled"] and "voc layout, 11 images with labels, 1 without" in out
    held_out, _ = run_split(capsys, "--data-root", voc["root"], "--labeled", "1/2", "--val", "2", "--out",
                            tmp_path / "o")
    assert held_out["val"] == sha256_first(ids[:-1], "val", 2)  # --val holds out instead


def test_split_lists_feed_the_dataset_reader(folder, capsys):
    lists, _ = run_split(capsys, "--data-root", folder["root"], "--labeled", "1/8", "--out", folder["out"])
    dataset_cfg = {"type": "custom", "train": {"data_root": str(folder["root"]),
                                               "data_list": str(folder["out"] / "labeled.txt")}}
    dataset = build_dataset(dataset_cfg, "train", num_classes=3)
    assert [dataset[i][2] for i in range(len(dataset))] == lists["labeled"]


@pytest.mark.parametrize("argv, message", [
    (["--labeled", "0"], "--labeled 0: selects 0 ids, expected at least 1"),
    (["--labeled", "0/16"], "--labeled 0/16: fraction out of range"),
    (["--labeled", "1.5"], "--labeled 1.5: fraction out of range"),
    (["--labeled", "1/0"], "--labeled 1/0: not an amount"),
    (["--labeled", "some"], "--labeled some: not an amount"),
    (["--labeled", "36"], "--labeled 36: 36 of 36 ids leaves no unlabeled ids"),
    (["--labeled", "2", "--val", "40"], "--val 40: 40 of 40 ids leaves no ids for training"),
    (["--labeled", "2", "--layout", "voc"], "JPEGImages: folder not found, expected the voc layout"),
])
def test_split_errors(folder, argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        make_splits.run(split_args("--data-root", folder["root"], *argv, "--out", folder["out"]))
    assert not os.path.exists(folder["out"])  # nothing written on an error


def test_split_errors_about_the_folder(tmp_path, folder):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    write_image(str(empty / "images" / "a.png"), np.zeros((4, 4, 3), np.uint8))  # an image without label
    with pytest.raises(UserError, match="no images with a label"):
        make_splits.run(split_args("--data-root", empty, "--labeled", "1"))
    with pytest.raises(UserError, match="neither JPEGImages/"):
        make_splits.run(split_args("--data-root", tmp_path, "--labeled", "1"))
    write_image(str(folder["root"] / "images" / "sub" / "im00.png"), np.zeros((6, 6, 3), np.uint8))  # beside .jpg
    with pytest.raises(UserError, match=r"sub/im00\.png: same id as .*sub/im00\.jpg"):
        make_splits.run(split_args("--data-root", folder["root"], "--labeled", "1"))
    os.remove(folder["root"] / "images" / "sub" / "im00.png")
    missing = write_list(tmp_path / "v.txt", ["im01", "u0"])
    with pytest.raises(UserError, match="'u0' .* has no image with a label"):
        make_splits.run(split_args("--data-root", folder["root"], "--labeled", "1", "--val-list", missing))


def test_split_command_line(folder):
    result = run_module("ms_semiseg", "split", "--data-root", folder["root"], "--labeled", "1/16", "--seed", "0",
                        "--out", folder["out"])
    assert result.returncode == 0, result.stderr
    assert f"labeled        3 -> {folder['out'] / 'labeled.txt'}" in result.stdout  # ceil(36 / 16)
    assert (folder["out"] / "unlabeled.txt").read_text().count("\n") == 33
    assert_user_error(run_module("ms_semiseg", "split", "--data-root", folder["root"], "--labeled", "2/1"),
                      "--labeled 2/1", "fraction out of range")


# ---------------------------------------------------------------------------------------------- end to end

def test_custom_dataset_trains_and_evaluates(tmp_path):
    """Folder -> split -> train (ResNet-18, crop 33, 2 epochs) -> eval, with names and palette from --opts."""
    pytest.importorskip("ms_semiseg.train.trainer", reason="the trainer (ms_semiseg.train.trainer) is not "
                                                          "importable yet, so `train` cannot run")
    root = tmp_path / "fields"
    make_custom_dataset(str(root), [f"field_{i:02d}" for i in range(11)], size=(36, 40), jpeg_ids={"field_03"})
    make_splits.run(split_args("--data-root", root, "--labeled", "4", "--val", "3"))
    splits = root / "splits" / "4"
    cfg = tiny_config()
    cfg["dataset"].update(type="custom", workers=1)
    point_at_data(cfg, str(root), str(splits / "labeled.txt"), str(splits / "val.txt"))
    cfg["net"]["proto_head"]["select_granularity"] = 4
    cfg["saver"]["main_dir"] = str(tmp_path / "unused")
    config = write_config(cfg, str(tmp_path))
    opts = ["net.num_classes=3", f"dataset.class_names=[{', '.join(NAMES)}]", f"dataset.palette={COLOURS}"]
    work = tmp_path / "work"
    trained = run_module("ms_semiseg", "train", "--config", config, "--device", "CPU", "--work-dir", work,
                         "--opts", "trainer.epochs=2", "trainer.sup_only_epoch=1", *opts)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = tmp_path / "metrics.json"
    evaluated = run_module("ms_semiseg", "eval", "--config", config, "--ckpt", work / "checkpoints" / "best.ckpt",
                           "--device", "CPU", "--protocol", "whole", "--metrics", metrics, "--no-progress",
                           "--opts", *opts)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert evaluated.stdout.strip().splitlines()[-1].startswith("mIoU: ")
    payload = json.loads(metrics.read_text())
    assert payload["num_classes"] == 3 and payload["num_images"] == 3
