"""Checkpoint converter: layouts it reads, the round trip, and one clear error per bad input (nothing written)."""
import os

import mindspore as ms
import numpy as np
import pytest
import torch

from convert import cli as convert_cli
from convert import mapping
from convert.reference import random_reference_model
from convert.torch_model import ResNet, TorchModelBuilder
from ms_semiseg.cli import run_cli
from ms_semiseg.utils.checkpoint import read_checkpoint
from tests.helpers import CITY_CONFIG, assert_user_error, run_module, tiny_config, write_config

ms.set_device("CPU")
pytestmark = pytest.mark.numeric  # conversions copy arrays: bit-exact on any machine, also under --old-isa


def convert(*argv):
    return run_cli(convert_cli._run, [str(a) for a in argv])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    cfg = tiny_config()
    cfg_path = write_config(cfg, str(root))
    pth = root / "random.pth"
    assert convert("random", "--config", cfg_path, "--out", pth, "--seed", 3) == 0
    return {"root": root, "cfg": cfg, "cfg_path": cfg_path, "pth": pth,
            "ckpt": torch.load(pth, weights_only=True)}


def _ms_params(path):
    return {k: v.asnumpy() for k, v in read_checkpoint(str(path)).items()}


def test_random_checkpoint_has_the_u2pl_layout(setup):
    ckpt = setup["ckpt"]
    assert set(ckpt) >= {"model_state", "teacher_state", "optimizer_state", "epoch", "best_miou"}
    assert all(k.startswith("module.") for k in ckpt["teacher_state"])
    reference = TorchModelBuilder(setup["cfg"]["net"])
    reference.load_state_dict(mapping.strip_module(ckpt["teacher_state"]), strict=True)


def test_pth2ckpt_prefers_the_teacher_and_round_trips_bit_exact(setup):
    root = setup["root"]
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", setup["pth"], "--out", root / "t.ckpt") == 0
    assert convert("ckpt2pth", "--config", setup["cfg_path"], "--ckpt", root / "t.ckpt", "--out", root / "back.pth") == 0
    teacher = mapping.strip_module(setup["ckpt"]["teacher_state"])
    back = mapping.strip_module(torch.load(root / "back.pth", weights_only=True)["model_state"])
    assert set(back) == set(teacher)
    for key, value in teacher.items():
        if key.endswith("num_batches_tracked"):  # no MindSpore counterpart: written back as 0
            assert int(back[key]) == 0
        else:
            assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    reference = TorchModelBuilder(setup["cfg"]["net"])
    reference.load_state_dict(back, strict=True)


def test_state_option_selects_the_student(setup):
    root = setup["root"]
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", setup["pth"], "--out", root / "s.ckpt",
                   "--state", "model_state") == 0
    student = mapping.torch_to_ms({k: v.numpy() for k, v in
                                   mapping.strip_module(setup["ckpt"]["model_state"]).items()})
    params = _ms_params(root / "s.ckpt")
    name = "decoder.classifier.8.weight"
    np.testing.assert_array_equal(params[name], student[name])
    assert not np.array_equal(params[name], _teacher_ms(setup)[name])


def _teacher_ms(setup):
    return mapping.torch_to_ms({k: v.numpy() for k, v in
                                mapping.strip_module(setup["ckpt"]["teacher_state"]).items()})


@pytest.mark.parametrize("layout", ["plain", "state_dict", "relation_net", "module_prefix_out"])
def test_other_layouts_convert(setup, layout):
    root = setup["root"]
    teacher = mapping.strip_module(setup["ckpt"]["teacher_state"])
    src = root / f"{layout}.pth"
    extra = []
    if layout == "plain":
        torch.save(teacher, src)
    elif layout == "state_dict":
        torch.save({"state_dict": setup["ckpt"]["teacher_state"], "epoch": 3}, src)
    elif layout == "relation_net":
        torch.save({k.replace("proto_net.", "relation_net."): v for k, v in teacher.items()}, src)
    else:
        src = setup["pth"]
        extra = ["--module-prefix"]
    out = root / f"{layout}.ckpt"
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", src, "--out", out, *extra) == 0
    params = _ms_params(out)
    expected = _teacher_ms(setup)
    if layout == "module_prefix_out":
        assert all(k.startswith("module.") for k in params)
        params = {k[len("module."):]: v for k, v in params.items()}
    assert set(params) == set(expected)
    np.testing.assert_array_equal(params["proto_net.proto_list"], expected["proto_net.proto_list"])


def test_imagenet_backbone_converts_to_encoder_weights(setup):
    root = setup["root"]
    backbone = ResNet("resnet18", replace_stride_with_dilation=(False, True, True), multi_grid=True, fpn=True)
    state = dict(backbone.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, root / "imagenet.pth")
    out = root / "encoder.ckpt"
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", root / "imagenet.pth", "--out", out) == 0
    params = _ms_params(out)
    assert all(k.startswith("encoder.") for k in params)
    assert "encoder.layer4.1.bn2.moving_variance" in params and not any("fc." in k for k in params)
    np.testing.assert_array_equal(params["encoder.conv1.0.weight"], state["conv1.0.weight"].numpy())


BAD_STATE_CASES = {
    "missing_key": (lambda sd: sd.pop("module.decoder.head.1.running_var"),
                    ["1 missing: decoder.head.1.moving_variance"]),
    "extra_key": (lambda sd: sd.__setitem__("module.decoder.extra.weight", torch.zeros(2)),
                  ["1 unexpected: decoder.extra.weight"]),
    "wrong_shape": (lambda sd: sd.__setitem__("module.decoder.head.0.weight", torch.zeros(256, 1280, 1, 1)),
                    ["wrong shape", "decoder.head.0.weight (256, 1280, 1, 1) != (256, 1280, 3, 3)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_STATE_CASES))
def test_state_dict_mismatches_are_listed_by_name(setup, case, capsys):
    mutate, fragments = BAD_STATE_CASES[case]
    state = dict(setup["ckpt"]["teacher_state"])
    mutate(state)
    src, out = setup["root"] / f"{case}.pth", setup["root"] / f"{case}.ckpt"
    torch.save({"teacher_state": state}, src)
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", src, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {src}")
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def test_wrong_num_classes_says_so(setup, tmp_path, capsys):
    cfg = tiny_config(base=CITY_CONFIG)
    cfg_path = write_config(cfg, str(tmp_path))
    out = tmp_path / "x.ckpt"
    assert convert("pth2ckpt", "--config", cfg_path, "--pth", setup["pth"], "--out", out) == 2
    err = capsys.readouterr().err
    assert "the checkpoint has 21 classes, the config's net.num_classes is 19" in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty", "not_a_checkpoint", "text", "missing"])
def test_unreadable_inputs_give_one_clear_line(setup, kind, capsys):
    root = setup["root"]
    src = root / f"{kind}.pth"
    if kind == "corrupt":
        src.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        data = setup["pth"].read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        src.write_bytes(b"")
    elif kind == "not_a_checkpoint":
        torch.save([1, 2, 3], src)
    elif kind == "text":
        src.write_text("hello\n")
    out = root / f"{kind}.ckpt"
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", src, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}") and "\n" not in err
    expected = {"missing": "file not found", "not_a_checkpoint": "holds a list"}.get(kind, "not a readable PyTorch")
    assert expected in err
    assert not out.exists()


def test_ckpt2pth_rejects_a_corrupt_ckpt(setup, capsys):
    bad = setup["root"] / "corrupt.ckpt"
    bad.write_bytes(b"\x00" * 100)
    assert convert("ckpt2pth", "--config", setup["cfg_path"], "--ckpt", bad, "--out", setup["root"] / "o.pth") == 2
    assert "not a readable MindSpore checkpoint" in capsys.readouterr().err


def test_command_line_end_to_end(setup, tmp_path):
    """The real `python -m convert` process: success output and a user error without traceback."""
    ok = run_module("convert", "pth2ckpt", "--config", setup["cfg_path"], "--pth", setup["pth"],
                    "--out", tmp_path / "cli.ckpt")
    assert ok.returncode == 0, ok.stderr
    assert "teacher_state" in ok.stdout and os.path.exists(tmp_path / "cli.ckpt")
    bad = run_module("convert", "pth2ckpt", "--config", setup["cfg_path"], "--pth", tmp_path / "nope.pth",
                     "--out", tmp_path / "nope.ckpt")
    assert_user_error(bad, "nope.pth", "file not found")


def test_random_reference_is_well_conditioned_for_parity():
    """The random reference keeps activations at a realistic scale (BN statistics calibrated)."""
    model = random_reference_model(tiny_config()["net"], seed=0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 65))
    assert 0.1 < float(out["pred"].abs().max()) < 100


def _torchvision_state(arch="resnet18"):
    """Keys and shapes of a torchvision ImageNet ResNet (7x7 stem, `fc`), built here without torchvision."""
    net = ResNet(arch, deep_stem=False)
    state = dict(net.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return state


def test_torchvision_layout_converts_for_a_plain_stem_config(tmp_path):
    cfg = tiny_config()
    cfg["net"]["encoder"]["kwargs"]["deep_stem"] = False
    cfg_path = write_config(cfg, str(tmp_path))
    state = _torchvision_state()
    assert "conv1.weight" in state and tuple(state["conv1.weight"].shape) == (64, 3, 7, 7)
    torch.save(state, tmp_path / "resnet18-torchvision.pth")
    out = tmp_path / "encoder.ckpt"
    assert convert("pth2ckpt", "--config", cfg_path, "--pth", tmp_path / "resnet18-torchvision.pth",
                   "--out", out) == 0
    params = _ms_params(out)
    np.testing.assert_array_equal(params["encoder.conv1.weight"], state["conv1.weight"].numpy())
    np.testing.assert_array_equal(params["encoder.bn1.moving_variance"], state["bn1.running_var"].numpy())
    assert not any(".fc." in k for k in params)


def test_torchvision_weights_for_a_deep_stem_config_explain_the_mismatch(setup, tmp_path, capsys):
    torch.save(_torchvision_state(), tmp_path / "tv.pth")
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", tmp_path / "tv.pth",
                   "--out", tmp_path / "x.ckpt") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "torchvision ResNet weights" in err and "deep_stem: false" in err
