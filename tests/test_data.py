"""Dataset readers vs PIL (upstream's reader), their user errors, transforms vs U2PL's torch ops, palettes."""

import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ms_semiseg.data import (
    CITYSCAPES_PALETTE,
    VOC_PALETTE,
    SegmentationDataset,
    build_dataset,
    build_transform,
    colorize,
    crop,
    derive_unlabeled_list,
    hflip,
    normalize,
    rand_resize,
    resize_bilinear_align_corners,
    resize_nearest,
    save_png_atomic,
)
from ms_semiseg.data.transforms import draw_rand_scale
from ms_semiseg.errors import UserError
from tests.fixtures import cityscapes_line, make_cityscapes_fixture, make_voc_fixture

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
VOC_ITEMS = [("2007_000032", (37, 53)), ("2007_000039", (40, 31)), ("2008_000002", (29, 29))]
CITY_NAMES = ["train/aachen/aachen_000000_000019", "train/bochum/bochum_000000_000313",
              "val/lindau/lindau_000000_000019"]
# torch computes bilinear source coordinates in float32, cv2 in double: they differ by float32 rounding of the
# coordinate, ~1e-5 on these small noisy images (see transforms.resize_bilinear).
CV2_BILINEAR_TOL = dict(rtol=0, atol=5e-5)


@pytest.fixture
def voc(tmp_path):
    return make_voc_fixture(str(tmp_path / "VOC2012"), VOC_ITEMS)


@pytest.fixture
def city(tmp_path):
    return make_cityscapes_fixture(str(tmp_path / "cityscapes"), CITY_NAMES, (24, 48))


def voc_dataset(fixture, list_name="val", **kwargs):
    return SegmentationDataset("pascal", fixture["root"], fixture["lists"][list_name], 21, **kwargs)


def city_dataset(fixture, list_name="train", **kwargs):
    return SegmentationDataset("cityscapes", fixture["root"], fixture["lists"][list_name], 19, **kwargs)


# ----------------------------------------------------------------------------------------------- readers


def test_voc_reader_matches_pil(voc):
    dataset = voc_dataset(voc)
    dataset.check_files()
    assert len(dataset) == len(VOC_ITEMS)
    for index, (sample_id, (height, width)) in enumerate(VOC_ITEMS):
        image, label, got_id = dataset[index]
        root = voc["root"]
        expected_image = np.asarray(Image.open(f"{root}/JPEGImages/{sample_id}.jpg").convert("RGB"))
        expected_label = np.asarray(Image.open(f"{root}/SegmentationClassAug/{sample_id}.png").convert("L"))
        assert got_id == sample_id and image.shape == (height, width, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)
        np.testing.assert_array_equal(label, voc["labels"][sample_id])
    assert 255 in voc["labels"][VOC_ITEMS[0][0]] and len(np.unique(voc["labels"][VOC_ITEMS[0][0]])) > 2


def test_cityscapes_reader_layout_and_content(city):
    dataset = city_dataset(city)
    assert len(dataset) == 2
    image, label, sample_id = dataset[1]
    line = cityscapes_line(CITY_NAMES[1])
    assert sample_id == "bochum_000000_000313_leftImg8bit"
    np.testing.assert_array_equal(image, city["images"][line])
    np.testing.assert_array_equal(label, city["labels"][line])
    _, image_path, label_path = dataset.sample_paths(1)
    assert image_path == os.path.join(city["root"], line)
    assert label_path == os.path.join(city["root"], "gtFine/train/bochum/bochum_000000_000313_gtFine_labelTrainIds.png")


def test_unlabeled_reader_returns_no_label(voc):
    image, label, _ = voc_dataset(voc, "unlabeled", with_labels=False)[0]
    assert label is None and image.ndim == 3


def test_derive_unlabeled_list():
    assert derive_unlabeled_list("/d/splits/pascal/92/labeled.txt") == "/d/splits/pascal/92/unlabeled.txt"


@pytest.mark.parametrize("dataset_type, kind", [("pascal_semi", "pascal"), ("pascal", "pascal"),
                                                ("cityscapes_semi", "cityscapes"), ("cityscapes", "cityscapes")])
def test_build_dataset_maps_types(voc, city, dataset_type, kind):
    fixture, list_name = (voc, "val") if kind == "pascal" else (city, "val")
    cfg = {"type": dataset_type, "val": {"data_root": fixture["root"], "data_list": fixture["lists"][list_name]}}
    dataset = build_dataset(cfg, "val")
    assert dataset.kind == kind and dataset.num_classes == {"pascal": 21, "cityscapes": 19}[kind]
    assert len(dataset) == len(open(fixture["lists"][list_name]).read().split())


def test_build_dataset_overrides(voc):
    cfg = {"type": "pascal_semi", "train": {"data_root": "/nonexistent", "data_list": "/nonexistent.txt"}}
    dataset = build_dataset(cfg, "train", data_root_override=voc["root"], list_override=voc["lists"]["labeled"])
    assert len(dataset) == 1 and dataset[0][2] == VOC_ITEMS[0][0]


def test_build_dataset_config_errors(voc):
    with pytest.raises(UserError, match="dataset.type: 'coco'"):
        build_dataset({"type": "coco", "val": {}}, "val")
    with pytest.raises(UserError, match="dataset.val.data_list: missing"):
        build_dataset({"type": "pascal_semi", "val": {"data_root": voc["root"]}}, "val")


# ----------------------------------------------------------------------------------------------- reader errors


def _overwrite(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


def _truncate(path):
    data = open(path, "rb").read()
    _overwrite(path, data[: len(data) // 2])


def _voc_image(fixture, index=0):
    return os.path.join(fixture["root"], "JPEGImages", VOC_ITEMS[index][0] + ".jpg")


def _voc_label(fixture, index=0):
    return os.path.join(fixture["root"], "SegmentationClassAug", VOC_ITEMS[index][0] + ".png")


def _write_rgb_label(path):
    cv2.imwrite(path, np.zeros((37, 53, 3), np.uint8))


def _write_palette_label(path):
    palette_png = Image.fromarray(np.zeros((37, 53), np.uint8), mode="P")
    palette_png.putpalette(VOC_PALETTE.ravel().tolist())
    palette_png.save(path)


def _write_out_of_range_label(path):
    label = np.zeros((37, 53), np.uint8)
    label[0, :3] = (21, 40, 255)
    cv2.imwrite(path, label)


def _write_small_label(path):
    cv2.imwrite(path, np.zeros((10, 12), np.uint8))


@pytest.mark.parametrize("corrupt, culprit, message", [
    (lambda path: _overwrite(path, b"not an image at all"), _voc_image, "cannot decode the image"),
    (_truncate, _voc_image, "cannot decode the image"),
    (_truncate, _voc_label, "cannot decode the label"),
    (_write_rgb_label, _voc_label, "looks like an RGB/color label"),
    (_write_palette_label, _voc_label, "looks like an RGB/color label"),
    (_write_out_of_range_label, _voc_label, r"label values \[21, 40\] are outside 0..20 and 255"),
    (_write_small_label, _voc_label, "label size 10x12 differs from image"),
], ids=["garbage-image", "truncated-jpeg", "truncated-label", "rgb-label", "palette-label", "bad-values",
        "size-mismatch"])
def test_bad_sample_raises_user_error_naming_file(voc, corrupt, culprit, message):
    corrupt(culprit(voc))
    dataset = voc_dataset(voc)
    dataset.check_files()  # the files exist; the problem shows when reading
    with pytest.raises(UserError, match=message) as error:
        dataset[0]
    assert str(error.value).startswith(culprit(voc)) and "\n" not in str(error.value)
    dataset[1]  # the other samples still read


def test_truncated_png_image_is_user_error(city):
    line = cityscapes_line(CITY_NAMES[0])
    _truncate(os.path.join(city["root"], line))
    with pytest.raises(UserError, match="cannot decode the image") as error:
        city_dataset(city)[0]
    assert os.path.join(city["root"], line) in str(error.value)


@pytest.mark.parametrize("remove", [_voc_image, _voc_label])
def test_missing_listed_file(voc, remove):
    os.remove(remove(voc))
    dataset = voc_dataset(voc)
    with pytest.raises(UserError, match="file not found") as error:
        dataset.check_files()
    assert remove(voc) in str(error.value)
    with pytest.raises(UserError, match="file not found"):
        dataset[0]


def test_missing_label_ignored_without_labels(voc):
    os.remove(_voc_label(voc))
    voc_dataset(voc, with_labels=False).check_files()


def test_missing_root_and_lists(voc, tmp_path):
    with pytest.raises(UserError, match="data root not found") as error:
        SegmentationDataset("pascal", str(tmp_path / "nope"), voc["lists"]["val"], 21)
    assert str(tmp_path / "nope") in str(error.value)
    with pytest.raises(UserError, match="split list not found") as error:
        SegmentationDataset("pascal", voc["root"], str(tmp_path / "none.txt"), 21)
    assert "none.txt" in str(error.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="split list is empty") as error:
        SegmentationDataset("pascal", voc["root"], str(empty), 21)
    assert str(empty) in str(error.value)


@pytest.mark.parametrize("kind, line", [("pascal", "JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png"),
                                        ("cityscapes", "aachen/aachen_000000_000019.png")])
def test_split_line_of_wrong_layout(voc, tmp_path, kind, line):
    list_path = tmp_path / "list.txt"
    list_path.write_text("\n" + line + "\n")
    with pytest.raises(UserError, match="line 2") as error:
        SegmentationDataset(kind, voc["root"], str(list_path), 21)
    assert str(list_path) in str(error.value)


# ----------------------------------------------------------------------------------------------- transforms


def torch_normalize(image):
    """U2PL ToTensor + Normalize: (1,3,H,W) float32."""
    tensor = torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).float()
    return (tensor - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def torch_label(label):
    return torch.from_numpy(label[None, None].astype(np.float32))


def torch_crop(image, label, size, mode, rng, label_pad=0):
    """U2PL Crop with the offsets drawn from `rng` instead of Python's random."""
    crop_h, crop_w = size
    height, width = image.shape[-2:]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h > 0 or pad_w > 0:
        border = (int(pad_w / 2), pad_w - int(pad_w / 2), int(pad_h / 2), pad_h - int(pad_h / 2))
        image = F.pad(image, border, mode="constant", value=0.0)
        label = F.pad(label, border, mode="constant", value=label_pad)
    height, width = image.shape[-2:]
    if mode == "rand":
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    else:
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[..., top:top + crop_h, left:left + crop_w], label[..., top:top + crop_h, left:left + crop_w]


def random_image_and_label(seed, size=(29, 41)):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size + (3,), dtype=np.uint8),
            rng.choice(np.array([0, 1, 5, 20, 255], np.uint8), size))


def test_normalize_matches_torch():
    image, _ = random_image_and_label(0)
    np.testing.assert_allclose(normalize(image, MEAN, STD), torch_normalize(image)[0].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_rand_resize_matches_torch(seed):
    image, label = random_image_and_label(seed)
    got_image, got_label = rand_resize(normalize(image, MEAN, STD), label, (0.5, 2.0), np.random.default_rng(seed))
    scale = draw_rand_scale((0.5, 2.0), np.random.default_rng(seed))
    size = (int(image.shape[0] * scale), int(image.shape[1] * scale))
    ref_image = F.interpolate(torch_normalize(image), size=size, mode="bilinear", align_corners=False)
    ref_label = F.interpolate(torch_label(label), size=size, mode="nearest")
    assert got_image.shape == (3,) + size
    np.testing.assert_allclose(got_image, ref_image[0].numpy(), **CV2_BILINEAR_TOL)
    np.testing.assert_array_equal(got_label, ref_label[0, 0].numpy().astype(np.uint8))


def test_rand_resize_scale_distribution():
    rng = np.random.default_rng(0)
    scales = np.array([draw_rand_scale((0.5, 2.0), rng) for _ in range(2000)])
    assert scales.min() >= 0.5 and scales.max() < 2.0
    assert abs(np.mean(scales < 1.0) - 0.5) < 0.05  # half the draws shrink, half enlarge


# (3, 123) and (375, 195) are sizes where cv2.INTER_NEAREST picks other source pixels than torch
@pytest.mark.parametrize("in_size, out_size", [(10, 15), (15, 10), (29, 31), (41, 82), (41, 20), (7, 100),
                                               (100, 7), (513, 769), (375, 562), (3, 123), (375, 195)])
def test_resize_nearest_matches_torch_legacy_nearest(in_size, out_size):
    label = np.arange(in_size * 3, dtype=np.int32).reshape(in_size, 3)  # distinct values expose any wrong pick
    for source, size in ((label, (out_size, 5)), (label.T.copy(), (5, out_size))):
        ref = F.interpolate(torch_label(source), size=size, mode="nearest")[0, 0].numpy()
        np.testing.assert_array_equal(resize_nearest(source, size), ref.astype(np.int32))


@pytest.mark.parametrize("image_size, crop_size, mode", [((29, 41), (21, 17), "rand"), ((29, 41), (33, 50), "rand"),
                                                         ((29, 41), (21, 50), "center"), ((10, 9), (13, 13), "center")])
@pytest.mark.parametrize("label_pad", [0, 255])
def test_crop_matches_torch(image_size, crop_size, mode, label_pad):
    image, label = random_image_and_label(3, image_size)
    normalized = normalize(image, MEAN, STD)
    got_image, got_label = crop(normalized, label, crop_size, mode, np.random.default_rng(7), label_pad)
    ref_image, ref_label = torch_crop(torch_normalize(image), torch_label(label), crop_size, mode,
                                      np.random.default_rng(7), label_pad)
    assert got_image.shape == (3,) + crop_size and got_label.shape == crop_size
    np.testing.assert_array_equal(got_image, ref_image[0].numpy())
    np.testing.assert_array_equal(got_label, ref_label[0, 0].numpy().astype(np.uint8))


def test_crop_pads_label_with_zero_by_default():
    image, label = np.zeros((3, 4, 4), np.float32), np.full((4, 4), 7, np.uint8)
    _, padded = crop(image, label, 6, "center")
    assert padded[0, 0] == 0 and padded[1, 1] == 7 and (padded == 0).sum() == 36 - 16


def test_hflip_mirrors_width():
    image, label = np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.arange(12, dtype=np.uint8).reshape(3, 4)
    flipped_image, flipped_label = hflip(image, label)
    np.testing.assert_array_equal(flipped_image, torch.flip(torch.from_numpy(image), [2]).numpy())
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])


@pytest.mark.parametrize("in_size, out_size", [((9, 13), (17, 25)), ((29, 41), (20, 11)), ((8, 8), (8, 8)),
                                               ((5, 7), (1, 1)), ((1, 6), (4, 9)), ((64, 32), (127, 61))])
def test_resize_bilinear_align_corners_matches_torch(in_size, out_size):
    array = np.random.default_rng(0).normal(size=(4,) + in_size).astype(np.float32) * 5
    ref = F.interpolate(torch.from_numpy(array)[None], size=out_size, mode="bilinear", align_corners=True)[0]
    got = resize_bilinear_align_corners(array, out_size)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(resize_bilinear_align_corners(array[0], out_size), ref[0].numpy(), rtol=0, atol=1e-5)


TRAIN_CFG = {
    "type": "pascal_semi", "mean": MEAN, "std": STD, "ignore_label": 255,
    "train": {"flip": True, "GaussianBlur": False, "rand_resize": [0.5, 2.0],
              "crop": {"type": "rand", "size": [23, 19]}},
    "val": {"crop": {"type": "center", "size": [23, 19]}},
}


def torch_train_pipeline(image, label, rng):
    """U2PL's train transform chain (ToTensor, Normalize, RandResize, flip, Crop) drawing from `rng`."""
    image, label = torch_normalize(image), torch_label(label)
    scale = draw_rand_scale((0.5, 2.0), rng)
    size = (int(image.shape[2] * scale), int(image.shape[3] * scale))
    image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    label = F.interpolate(label, size=size, mode="nearest")
    if rng.random() < 0.5:
        image, label = torch.flip(image, [3]), torch.flip(label, [3])
    return torch_crop(image, label, (23, 19), "rand", rng)


@pytest.mark.parametrize("seed", range(4))
def test_train_transform_matches_torch_pipeline(seed):
    image, label = random_image_and_label(seed)
    got_image, got_label = build_transform(TRAIN_CFG, "train")(image, label, np.random.default_rng(seed))
    ref_image, ref_label = torch_train_pipeline(image, label, np.random.default_rng(seed))
    np.testing.assert_allclose(got_image, ref_image[0].numpy(), **CV2_BILINEAR_TOL)
    np.testing.assert_array_equal(got_label, ref_label[0, 0].numpy().astype(np.uint8))


def test_val_transform_is_deterministic_center_crop():
    image, label = random_image_and_label(1)
    transform = build_transform(TRAIN_CFG, "val")
    assert not transform.is_random
    got_image, got_label = transform(image, label)
    ref_image, ref_label = torch_crop(torch_normalize(image), torch_label(label), (23, 19), "center", None)
    np.testing.assert_array_equal(got_image, ref_image[0].numpy())
    np.testing.assert_array_equal(got_label, ref_label[0, 0].numpy().astype(np.uint8))


@pytest.mark.parametrize("key, value, message", [
    ("rand_resize", [2.0, 0.5], "dataset.train.rand_resize"),
    ("crop", {"type": "random", "size": [5, 5]}, "dataset.train.crop.type"),
    ("crop", {"type": "rand", "size": [5, 0]}, "dataset.train.crop.size"),
    ("GaussianBlur", True, "dataset.train.GaussianBlur"),
    ("resize", [10, 10], "dataset.train.resize"),
])
def test_build_transform_rejects_bad_config(key, value, message):
    cfg = {**TRAIN_CFG, "train": {**TRAIN_CFG["train"], key: value}}
    with pytest.raises(UserError, match=message):
        build_transform(cfg, "train")


# ----------------------------------------------------------------------------------------------- palettes


def test_palettes_known_entries():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
                20: (0, 64, 128), 255: (224, 224, 192)}
    for index, rgb in expected.items():
        assert tuple(VOC_PALETTE[index]) == rgb
    assert tuple(CITYSCAPES_PALETTE[0]) == (128, 64, 128) and tuple(CITYSCAPES_PALETTE[18]) == (119, 11, 32)
    assert tuple(CITYSCAPES_PALETTE[255]) == (0, 0, 0)


def test_colorize_and_save_png_atomic(tmp_path):
    label = np.array([[0, 1], [15, 255]], np.uint8)
    color = colorize(label)
    assert color.shape == (2, 2, 3) and tuple(color[1, 0]) == (192, 128, 128)
    color_path, gray_path = str(tmp_path / "out" / "c.png"), str(tmp_path / "out" / "g.png")
    save_png_atomic(color_path, color)
    save_png_atomic(gray_path, label)
    np.testing.assert_array_equal(np.asarray(Image.open(color_path).convert("RGB")), color)
    np.testing.assert_array_equal(cv2.imread(gray_path, cv2.IMREAD_UNCHANGED), label)
    assert sorted(os.listdir(tmp_path / "out")) == ["c.png", "g.png"]
