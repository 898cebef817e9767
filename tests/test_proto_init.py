"""Prototype initialisation (spec C.1): pixel sampling, feature collection, k-means, the upstream pickle and
the `init-protos` command."""

import argparse
import pickle

import mindspore as ms
import numpy as np
import pytest

from ms_semiseg.errors import UserError
from ms_semiseg.models import create_model
from ms_semiseg.models.layers import resize_bilinear
from ms_semiseg.methods.pcr import proto_init
from ms_semiseg.methods.pcr.proto_init import (
    collect_class_features,
    kmeans_prototypes,
    load_proto_pickle,
    save_proto_pickle,
    select_patch_pixels,
    sample_upsampled,
)
from ms_semiseg.utils.checkpoint import save_params_atomic
from tests.fixtures import make_voc_fixture
from tests.helpers import assert_user_error, run_module, tiny_config, write_config

ms.set_device("CPU")


# ------------------------------------------------------------------------------------------------ sampling


def test_patch_pixels_one_per_cell():
    rng = np.random.default_rng(0)
    index = select_patch_pixels(70, 45, 4, rng)  # cells 17 x 11; rows 68-69 and column 44 never picked
    rows, cols = np.divmod(index, 45)
    assert index.size == 16
    np.testing.assert_array_equal(np.sort(rows // 17), np.repeat(np.arange(4), 4))
    np.testing.assert_array_equal(np.sort(cols // 11), np.repeat(np.arange(4), 4))
    assert rows.max() < 68 and cols.max() < 44
    small = select_patch_pixels(3, 5, 4, rng)  # sides shorter than G: 1-pixel cells, every row
    np.testing.assert_array_equal(np.sort(small // 5), np.repeat(np.arange(3), 4))


@pytest.mark.numeric
def test_sample_upsampled_equals_indexing_the_full_upsampled_map(monkeypatch):
    rep = ms.Tensor(np.random.default_rng(1).standard_normal((1, 10, 5, 7)).astype(np.float32))
    index = np.array([0, 17, 76, 150, 199, 4])
    full = resize_bilinear(rep, (20, 10)).asnumpy().reshape(10, -1)[:, index].T
    monkeypatch.setattr(proto_init, "_UPSAMPLE_FLOATS", 3 * 200)  # 3 channels per resize call: 4 chunks
    np.testing.assert_allclose(sample_upsampled(rep, (20, 10), index), full, rtol=0, atol=1e-6)


class CoordinateModel:
    """Stand-in for ModelBuilder: rep_clf at input resolution holding (label, row, col) of each pixel."""

    def __init__(self, labels):
        self.labels, self.training, self.calls = iter(labels), True, 0

    def set_train(self, mode):
        self.training = mode

    def __call__(self, x):
        assert not self.training
        label = next(self.labels)
        rows, cols = np.indices(label.shape)
        rep = np.stack([label, rows, cols]).astype(np.float32)[None]
        return None, None, None, ms.Tensor(rep)


def labels_for_collection(rng, count=3, size=(40, 48)):
    labels = [rng.integers(0, 3, size) for _ in range(count)]
    for label in labels:
        label[:5] = 255
    return labels


def collect(labels, cap, seed=0):
    model = CoordinateModel(labels)
    pairs = [(np.zeros((3,) + label.shape, np.float32), label) for label in labels]
    return collect_class_features(model, iter(pairs), 3, cap, seed, granularity=8), model


def test_collect_groups_sampled_pixels_by_class():
    labels = labels_for_collection(np.random.default_rng(2))
    features, model = collect(labels, cap=10_000)
    assert model.training  # mode restored
    total = 0
    for cls in range(3):
        feats = features[cls]
        assert feats.dtype == np.float32 and feats.shape[1] == 3
        np.testing.assert_array_equal(feats[:, 0], cls)
        rows, cols = feats[:, 1].astype(int), feats[:, 2].astype(int)
        assert np.all(rows // 5 < 8) and np.all(cols // 6 < 8)  # 5 x 6 cells of the 8 x 8 grid
        total += len(feats)
    # one pixel per cell and image, minus the ignored ones (rows 0-4 = the first row of cells)
    assert total == 3 * 7 * 8


def test_collect_caps_each_class_and_is_seeded():
    labels = labels_for_collection(np.random.default_rng(2))
    capped, _ = collect(labels, cap=20, seed=4)
    uncapped, _ = collect(labels, cap=10_000, seed=4)
    for cls in range(3):
        assert len(capped[cls]) == 20
        # the capped sample is a subset of what was offered
        offered = {tuple(row) for row in uncapped[cls]}
        assert {tuple(row) for row in capped[cls]} <= offered
    again, _ = collect(labels, cap=20, seed=4)
    other, _ = collect(labels, cap=20, seed=5)
    np.testing.assert_array_equal(again[1], capped[1])
    assert not np.array_equal(other[1], capped[1])


# ---------------------------------------------------------------------------------------------------- k-means


def clustered(rng, centres, per_centre=60, noise=0.01):
    return np.concatenate([c + noise * rng.standard_normal((per_centre, c.size)) for c in centres]).astype(np.float32)


def test_kmeans_recovers_centres_in_class_major_order():
    rng = np.random.default_rng(3)
    num_classes, k, dim = 3, 2, 8
    centres = rng.standard_normal((num_classes, k, dim)) * 5
    features = {c: clustered(rng, centres[c]) for c in range(num_classes)}
    bank = kmeans_prototypes(features, num_classes, k, seed=0, dim=dim)
    assert bank.shape == (num_classes * k, dim) and bank.dtype == np.float32
    for cls in range(num_classes):
        rows = bank[cls * k:(cls + 1) * k]
        distance = np.linalg.norm(rows[:, None] - centres[cls][None], axis=2)
        assert sorted(distance.argmin(axis=1)) == list(range(k))  # each true centre found once
        assert distance.min(axis=1).max() < 0.01
    # bit-identical: the same k-means with the same seed twice in one process (same-machine determinism)
    np.testing.assert_array_equal(bank, kmeans_prototypes(features, num_classes, k, seed=0, dim=dim))


def test_kmeans_small_and_empty_classes(caplog):
    one = np.full((1, 4), 2.0, np.float32)
    three = np.arange(12, dtype=np.float32).reshape(3, 4)
    same = np.repeat(three[:1], 9, axis=0)  # many pixels, one distinct feature
    bank = kmeans_prototypes({0: one, 1: three, 2: np.zeros((0, 4)), 3: same}, 4, 4, seed=0, dim=4)
    np.testing.assert_array_equal(bank[0:4], np.repeat(one, 4, axis=0))
    np.testing.assert_array_equal(bank[4:8], three[[0, 1, 2, 0]])
    np.testing.assert_array_equal(bank[8:12], 0.0)
    np.testing.assert_array_equal(bank[12:16], np.repeat(three[:1], 4, axis=0))
    assert "classes [2] have no labeled pixels" in caplog.text
    with pytest.raises(ValueError, match="class 0 features have shape"):
        kmeans_prototypes({0: np.ones((5, 3))}, 1, 2, seed=0, dim=4)


# ------------------------------------------------------------------------------------------------ pickle file


def test_pickle_round_trip_in_the_upstream_layout(tmp_path):
    bank = np.random.default_rng(4).standard_normal((3 * 2, 512)).astype(np.float32)
    path = str(tmp_path / "class_wise_protos_2_perpixel.pickle")
    save_proto_pickle(path, bank, 3, 2)
    with open(path, "rb") as handle:
        raw = pickle.load(handle)
    assert sorted(raw) == [0, 1, 2]
    for cls in range(3):
        assert len(raw[cls]) == 2 and all(p.shape == (512,) and p.dtype == np.float32 for p in raw[cls])
        np.testing.assert_array_equal(np.stack(raw[cls]), bank[cls * 2:(cls + 1) * 2])  # c-major rows
    np.testing.assert_array_equal(load_proto_pickle(path, 3, 2, 512), bank)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temp file


def write_pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return str(path)


def test_load_accepts_a_list_of_arrays(tmp_path):
    bank = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    path = write_pickle(tmp_path / "p.pickle", [bank[0], list(bank[1])])  # (K, D) array or list of K vectors
    np.testing.assert_array_equal(load_proto_pickle(path, 2, 3, 4), bank.reshape(6, 4))


@pytest.mark.parametrize("content, message", [
    ([np.zeros((3, 4))] * 3, "has 3 classes, expected 2"),
    ([np.zeros((2, 4))] * 2, r"class 0 has prototypes of shape \(2, 4\), expected \(3, 4\)"),
    ([np.zeros((3, 5))] * 2, r"class 0 has prototypes of shape \(3, 5\), expected \(3, 4\)"),
    ({0: np.zeros((3, 4)), 2: np.zeros((3, 4))}, "class keys"),
    ([np.zeros((3, 4)), np.full((3, 4), np.nan)], "class 1 has NaN/inf"),
    ("protos", "holds a str"),
    ([argparse.Namespace()] * 2, "not a readable prototype pickle"),
])
def test_load_mismatches_are_user_errors(tmp_path, content, message):
    path = write_pickle(tmp_path / "bad.pickle", content)
    with pytest.raises(UserError, match=message) as error:
        load_proto_pickle(path, 2, 3, 4)
    assert str(error.value).startswith(path)


def test_load_missing_or_garbage_file(tmp_path):
    with pytest.raises(UserError, match="prototype file not found"):
        load_proto_pickle(str(tmp_path / "none.pickle"), 2, 3, 4)
    garbage = tmp_path / "garbage.pickle"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="not a readable prototype pickle"):
        load_proto_pickle(str(garbage), 2, 3, 4)


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """Tiny ResNet-18 PCR config over a 4-image VOC fixture, and a random checkpoint of a supervised model
    (an aux head, no prototype bank: init-protos must ignore both)."""
    tmp = tmp_path_factory.mktemp("init_protos")
    ids = [(f"2007_{i:06d}", size) for i, size in enumerate([(40, 52), (36, 36), (45, 30), (38, 41)])]
    voc = make_voc_fixture(str(tmp / "VOC2012"), ids)
    cfg = tiny_config()
    cfg["dataset"]["train"].update(data_root=voc["root"], data_list=voc["lists"]["labeled"])
    cfg_path = write_config(cfg, str(tmp / "exp"))
    sup_net = tiny_config(aux_loss={"aux_plane": 256, "loss_weight": 0.4})["net"]
    sup_net.pop("proto_head")
    model = create_model(sup_net)
    ckpt = str(tmp / "sup.ckpt")
    save_params_atomic({p.name: p.asnumpy() for p in model.get_parameters()}, ckpt)
    # labeled = the first two images; at these sizes the 32 x 32 grid has 1-pixel cells: the top-left 32 x 32
    present = {int(c) for sample_id, _ in ids[:2] for c in np.unique(voc["labels"][sample_id][:32, :32])}
    no_proto = dict(cfg, net=sup_net)
    return {"tmp": tmp, "cfg_path": cfg_path, "ckpt": ckpt, "present": sorted(present - {255}),
            "no_proto_cfg": write_config(no_proto, str(tmp / "exp_sup"))}


def test_init_protos_cli_end_to_end(cli_setup):
    out = cli_setup["tmp"] / "protos" / "class_wise_protos_4_perpixel.pickle"
    result = run_module("ms_semiseg", "init-protos", "--config", cli_setup["cfg_path"], "--ckpt",
                        cli_setup["ckpt"], "--out", out, "--device", "CPU", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    bank = load_proto_pickle(str(out), 21, 4, 512)
    present = cli_setup["present"]
    for cls in range(21):
        rows = bank[cls * 4:(cls + 1) * 4]
        assert np.any(rows != 0) == (cls in present), cls
    class_lines = [ln for ln in result.stdout.splitlines() if ln.startswith("class ")]
    assert len(class_lines) == 21
    for cls, line in enumerate(class_lines):
        assert line.startswith(f"class {cls:2d}") and ("(no pixels" in line) == (cls not in present), line
    assert str(out) in result.stdout.splitlines()[-1]


def run_in_process(cli_setup, **overrides):
    args = dict(config=cli_setup["cfg_path"], ckpt=cli_setup["ckpt"], out=str(cli_setup["tmp"] / "x.pickle"),
                data_root=None, device="CPU", seed=2, per_class_cap=100, opts=[])
    args.update(overrides)
    return proto_init.run(argparse.Namespace(**args))


def test_init_protos_user_errors(cli_setup, tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        run_in_process(cli_setup, ckpt=str(tmp_path / "none.ckpt"))
    with pytest.raises(UserError, match="net.proto_head.num_micro_proto: missing"):
        run_in_process(cli_setup, config=cli_setup["no_proto_cfg"])
    with pytest.raises(UserError, match="--per-class-cap 0"):
        run_in_process(cli_setup, per_class_cap=0)
    wrong = create_model(tiny_config(arch="resnet34")["net"])
    ckpt = str(tmp_path / "r34.ckpt")
    save_params_atomic({p.name: p.asnumpy() for p in wrong.get_parameters()}, ckpt)
    with pytest.raises(UserError, match="does not match the model"):
        run_in_process(cli_setup, ckpt=ckpt)


def test_init_protos_cli_error_is_one_line(cli_setup, tmp_path):
    result = run_module("ms_semiseg", "init-protos", "--config", cli_setup["cfg_path"], "--ckpt",
                        tmp_path / "none.ckpt", "--out", tmp_path / "p.pickle", "--device", "CPU")
    assert_user_error(result, "none.ckpt", "checkpoint not found")
