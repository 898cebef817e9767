"""safetensors in and out: PyTorch state dicts saved as .safetensors into `convert pth2ckpt`, MindSpore safetensors
checkpoints written by `--format safetensors` and read by every command that reads a checkpoint (read_checkpoint,
load_model), and back to PyTorch; the same bits and the same logits as the .pth / .ckpt path."""
import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from convert import cli as convert_cli
from convert import mapping
from convert.torch_model import TorchModelBuilder
from ms_semiseg.cli import run_cli
from ms_semiseg.config import load_config
from ms_semiseg.errors import UserError
from ms_semiseg.utils.checkpoint import is_safetensors, read_checkpoint
from tests.helpers import tiny_config, write_config

ms.set_device("CPU")
pytestmark = pytest.mark.numeric  # conversions copy arrays: bit-exact on any machine


def convert(*argv):
    return run_cli(convert_cli._run, [str(a) for a in argv])


def _numpy(path):
    return {k: v.asnumpy() for k, v in read_checkpoint(str(path)).items()}


def _assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("safetensors")
    cfg_path = write_config(tiny_config(), str(root))
    pth = root / "random.pth"
    assert convert("random", "--config", cfg_path, "--out", pth, "--seed", 5) == 0
    checkpoint = torch.load(pth, weights_only=True)
    assert convert("pth2ckpt", "--config", cfg_path, "--pth", pth, "--out", root / "ref.ckpt") == 0
    return {"root": root, "cfg_path": cfg_path, "pth": pth, "checkpoint": checkpoint,
            "teacher": mapping.strip_module(checkpoint["teacher_state"]), "ref": _numpy(root / "ref.ckpt")}


def test_pth2ckpt_reads_a_torch_safetensors_state_dict(setup):
    root = setup["root"]
    plain = root / "teacher.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in setup["teacher"].items()}, str(plain))
    assert is_safetensors(plain) and not is_safetensors(setup["pth"])
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", plain, "--out", root / "a.ckpt") == 0
    _assert_same(_numpy(root / "a.ckpt"), setup["ref"])  # the same bits as from the .pth


def test_flattened_checkpoint_dict_picks_the_teacher_or_the_state_prefix(setup):
    root = setup["root"]
    flat = {f"{entry}.{k}": v.contiguous() for entry in ("teacher_state", "model_state")
            for k, v in setup["checkpoint"][entry].items()}
    save_file(flat, str(root / "flat.safetensors"))
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", root / "flat.safetensors",
                   "--out", root / "t.ckpt") == 0
    _assert_same(_numpy(root / "t.ckpt"), setup["ref"])
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", root / "flat.safetensors",
                   "--out", root / "s.ckpt", "--state", "model_state") == 0
    student = mapping.torch_to_ms({k: v.numpy() for k, v in
                                   mapping.strip_module(setup["checkpoint"]["model_state"]).items()})
    np.testing.assert_array_equal(_numpy(root / "s.ckpt")["decoder.classifier.8.weight"],
                                  student["decoder.classifier.8.weight"])


@pytest.mark.parametrize("out,extra", [("m.safetensors", ()), ("m.weights", ("--format", "safetensors"))])
def test_pth2ckpt_writes_mindspore_safetensors(setup, out, extra):
    root = setup["root"]
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", setup["pth"], "--out", root / out,
                   *extra) == 0
    assert is_safetensors(root / out) and not list(root.glob(f".{out}.tmp-*"))
    _assert_same(_numpy(root / out), setup["ref"])
    if out.endswith(".safetensors"):  # MindSpore's own reader takes it as it is
        native = ms.load_checkpoint(str(root / out), format="safetensors")
        _assert_same({k: v.asnumpy() for k, v in native.items()}, setup["ref"])


def test_safetensors_round_trip_back_to_torch_bit_exact(setup):
    root = setup["root"]
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", setup["pth"],
                   "--out", root / "rt.safetensors") == 0
    assert convert("ckpt2pth", "--config", setup["cfg_path"], "--ckpt", root / "rt.safetensors",
                   "--out", root / "back.pth") == 0
    assert convert("ckpt2pth", "--config", setup["cfg_path"], "--ckpt", root / "rt.safetensors",
                   "--out", root / "back.safetensors", "--plain") == 0
    from safetensors.torch import load_file
    from_pth = mapping.strip_module(torch.load(root / "back.pth", weights_only=True)["model_state"])
    from_st = load_file(str(root / "back.safetensors"))
    for back in (from_pth, from_st):
        assert set(back) == set(setup["teacher"])
        for key, value in setup["teacher"].items():
            if not key.endswith("num_batches_tracked"):
                assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
        TorchModelBuilder(load_config(setup["cfg_path"])["net"]).load_state_dict(back, strict=True)


def test_ckpt2pth_safetensors_needs_plain(setup, capsys):
    out = setup["root"] / "nested.safetensors"
    assert convert("ckpt2pth", "--config", setup["cfg_path"], "--ckpt", setup["root"] / "ref.ckpt",
                   "--out", out) == 2
    assert "--plain" in capsys.readouterr().err and not out.exists()


def test_model_from_safetensors_gives_the_logits_of_the_ckpt(setup):
    from ms_semiseg.eval.predictor import load_model
    from ms_semiseg.models import SegmentationInference
    root = setup["root"]
    assert convert("pth2ckpt", "--config", setup["cfg_path"], "--pth", setup["pth"],
                   "--out", root / "eval.safetensors") == 0
    cfg = load_config(setup["cfg_path"])
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 65, 65)).astype(np.float32))
    outputs = [SegmentationInference(load_model(cfg, str(root / name), say=lambda _: None))(x)
               for name in ("ref.ckpt", "eval.safetensors")]
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_parity_reads_safetensors_like_pth(setup, capsys):
    root = setup["root"]
    save_file({k: v.contiguous() for k, v in setup["teacher"].items()}, str(root / "parity.safetensors"))
    lines = []
    for weights in (setup["pth"], root / "parity.safetensors"):
        capsys.readouterr()
        assert convert("parity", "--config", setup["cfg_path"], "--pth", weights, "--height", "65",
                       "--width", "65", "--atol", "1e-3") == 0
        lines.append([ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("parity:")])
    assert lines[0] and lines[0] == lines[1]  # the same weights: the same figures


@pytest.mark.parametrize("side", ["torch", "mindspore"])
def test_corrupt_safetensors_is_one_line_error(setup, side):
    bad = setup["root"] / f"bad-{side}.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)  # 4 of the 16 data bytes
    assert is_safetensors(bad)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        if side == "torch":
            mapping.read_pth(str(bad))
        else:
            read_checkpoint(str(bad))
