"""Checkpoints of the original PCR MindSpore release (HeimingX/semi_seg_proto): `module.` names, no aux-conv bias in
its Cityscapes files, and its stem max-pool pad_mode='same' (net.encoder.kwargs.stem_pool: same). The release
files cannot be downloaded here, so each test writes one in the release's layout from our own tiny model.
Also: harmless extra entries (num_batches_tracked, optimizer slots, counters) are skipped with a note, unknown
model names still fail, and eval.sh runs such files end to end."""
import os
import re
import subprocess

import mindspore as ms
import numpy as np
import pytest
import torch

from convert import cli as convert_cli
from convert import mapping
from convert.torch_model import TorchModelBuilder
from ms_semiseg.cli import run_cli
from ms_semiseg.config import load_config, net_config
from ms_semiseg.errors import UserError
from ms_semiseg.eval.predictor import load_model
from ms_semiseg.models import create_model
from ms_semiseg.utils.checkpoint import RELEASE_MISSING_BIAS, load_into_model, read_checkpoint, save_params_atomic
from tests.fixtures import make_cityscapes_fixture, make_voc_fixture
from tests.helpers import (CITY_CONFIG, REPO_ROOT, VOC_CONFIG, assert_user_error, run_module, tiny_config,
                           write_config)

ms.set_device("CPU")
SAME = "net.encoder.kwargs.stem_pool=same"
X_EVEN = np.random.default_rng(7).standard_normal((1, 3, 60, 84)).astype(np.float32)  # even (30x42) after the stem conv


def _release_model(base=CITY_CONFIG, seed=0):
    """Our tiny model built as the release builds it: pad_mode='same' stem pool, aux first conv without bias (zeros)."""
    cfg = tiny_config(base=base)
    cfg["net"]["encoder"]["kwargs"]["stem_pool"] = "same"
    ms.set_seed(seed)
    net = create_model(cfg["net"])
    for param in net.get_parameters():  # BN statistics away from (0, 1), so that every tensor matters
        if param.name.endswith(("moving_mean", "moving_variance", "beta")):
            value = np.random.default_rng(len(param.name)).uniform(0.1, 0.5, param.shape).astype(np.float32)
            param.set_data(ms.Tensor(value))
    if net.use_aux:
        bias = net.auxor.aux[0].bias
        bias.set_data(ms.Tensor(np.zeros(bias.shape, np.float32)))
    net.set_train(False)
    return cfg, net


def _write_release_ckpt(net, path, extra=None):
    """The release's eval.py layout: every name `module.`-prefixed, the aux first conv without bias."""
    params = {"module." + p.name: p.asnumpy() for p in net.get_parameters() if p.name != RELEASE_MISSING_BIAS}
    params.update(extra or {})
    save_params_atomic(params, str(path))
    return path


def _logits(net, x=X_EVEN):
    net.set_train(False)
    pred, aux, _, rep_clf = net(ms.Tensor(x))
    return pred.asnumpy(), None if aux is None else aux.asnumpy(), rep_clf.asnumpy()


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_city")
    cfg, net = _release_model()
    ckpt = _write_release_ckpt(net, root / "best.ckpt")
    del cfg["net"]["encoder"]["kwargs"]["stem_pool"]  # the config as shipped: PyTorch pooling unless --opts say same
    return {"root": root, "net": net, "ckpt": ckpt, "cfg_path": write_config(cfg, str(root)),
            "logits": _logits(net)}


def test_release_cityscapes_file_loads_and_gives_the_release_networks_logits(city, capsys):
    assert RELEASE_MISSING_BIAS not in read_checkpoint(str(city["ckpt"])) and len(read_checkpoint(str(city["ckpt"])))
    cfg = load_config(city["cfg_path"], [SAME])
    model = load_model(cfg, str(city["ckpt"]))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2, out
    assert out[0].startswith(f"note: {city['ckpt']}: no auxor.aux.0.bias") and "read as zeros" in out[0]
    assert "pad_mode='same' as the release" in out[1] and "drop net.encoder.kwargs.stem_pool" in out[1]
    for ours, theirs in zip(_logits(model), city["logits"]):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.auxor.aux[0].bias.asnumpy(), 0.0)


def test_release_file_with_the_pytorch_pooling_says_how_to_switch(city, capsys):
    model = load_model(load_config(city["cfg_path"]), str(city["ckpt"]))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "padding=1, ceil_mode=True as PyTorch" in line and f"--opts {SAME}" in line
    pred = _logits(model)[0]
    # after the stem conv 30x42 is even: PyTorch's pooling gives 16x22, the release's 15x21 (and another grid)
    assert pred.shape[2:] == (16, 22) and city["logits"][0].shape[2:] == (15, 21)


def test_missing_aux_bias_outside_the_release_layout_is_still_refused(city, tmp_path):
    params = {k[len("module."):]: v for k, v in read_checkpoint(str(city["ckpt"])).items()}
    save_params_atomic({k: v.asnumpy() for k, v in params.items()}, str(tmp_path / "plain.ckpt"))
    with pytest.raises(UserError, match="1 missing: auxor.aux.0.bias"):
        load_model(load_config(city["cfg_path"], [SAME]), str(tmp_path / "plain.ckpt"))


def test_ckpt2pth_accepts_a_release_file_and_round_trips(city, capsys):
    root = city["root"]
    convert = lambda *argv: run_cli(convert_cli._run, [str(a) for a in argv])  # noqa: E731
    assert convert("ckpt2pth", "--config", city["cfg_path"], "--ckpt", city["ckpt"], "--out", root / "r.pth",
                   "--opts", SAME) == 0
    assert "read as zeros" in capsys.readouterr().out
    state = mapping.strip_module(torch.load(root / "r.pth", weights_only=True)["model_state"])
    assert not state["auxor.aux.0.bias"].any()
    cfg = load_config(city["cfg_path"], [SAME])
    twin = TorchModelBuilder(net_config(cfg))
    twin.load_state_dict(state, strict=True)
    twin.eval()
    with torch.no_grad():
        ref = twin(torch.from_numpy(X_EVEN))
    scale = float(np.abs(city["logits"][0]).max())
    assert np.abs(ref["pred"].numpy() - city["logits"][0]).max() <= 1e-4 * max(scale, 1.0)  # float32 rounding only

    assert convert("pth2ckpt", "--config", city["cfg_path"], "--pth", root / "r.pth", "--out", root / "back.ckpt",
                   "--module-prefix") == 0
    back = {k: v.asnumpy() for k, v in read_checkpoint(str(root / "back.ckpt")).items()}
    original = {"module." + p.name: p.asnumpy() for p in city["net"].get_parameters()}
    assert set(back) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def _with_extras(net, path, extra):
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    params.update(extra)
    save_params_atomic(params, str(path))
    return str(path)


HARMLESS = {
    "encoder.bn1.num_batches_tracked": np.array(7, np.int64),
    "decoder.head.1.num_batches_tracked": np.array(7, np.int64),
    "moments.encoder.conv1.0.weight": np.zeros((64, 3, 3, 3), np.float32),
    "moments.decoder.classifier.8.bias": np.zeros(19, np.float32),
    "global_step": np.array([1000], np.int32),
    "learning_rate": np.array([0.01], np.float32),
}


def test_harmless_extras_are_skipped_with_one_note(city, tmp_path):
    path = _with_extras(city["net"], tmp_path / "extras.ckpt", HARMLESS)
    notes = []
    model = load_into_model(create_model(tiny_config(base=CITY_CONFIG)["net"]), path, say=notes.append)
    assert notes == [f"note: {path}: skipped 6 entries that are not model weights: 2 BatchNorm num_batches_tracked; "
                     "2 optimizer state (moments.*); 2 training counter(s) (global_step, learning_rate)"]
    np.testing.assert_array_equal(model.encoder.conv1[0].weight.asnumpy(), city["net"].encoder.conv1[0].weight.asnumpy())


def test_unknown_model_names_still_fail_with_the_list(city, tmp_path):
    extra = dict(HARMLESS, **{"decoder.extra.weight": np.zeros(3, np.float32),
                              "proto_net.old_bank": np.zeros((2, 2), np.float32)})
    path = _with_extras(city["net"], tmp_path / "unknown.ckpt", extra)
    with pytest.raises(UserError, match=r"2 unexpected: decoder.extra.weight, proto_net.old_bank\)$"):
        load_into_model(create_model(tiny_config(base=CITY_CONFIG)["net"]), path, say=lambda line: None)


LAST_LINE = re.compile(r"^mIoU: \d+\.\d\d \(proto: \d+\.\d\d\)$")


@pytest.mark.parametrize("experiment", ["cityscapes/186", "pascal/92"])
def test_eval_sh_runs_a_release_file(experiment, tmp_path):
    """The experiments' eval.sh on a release-layout file (tiny encoder via --opts): Cityscapes with the PyTorch
    pooling (the note says how to switch), VOC with the release's `same` pooling."""
    city = experiment.startswith("cityscapes")
    _, net = _release_model(CITY_CONFIG if city else VOC_CONFIG, seed=1)
    ckpt = _write_release_ckpt(net, tmp_path / "best.ckpt")
    if city:
        fixture = make_cityscapes_fixture(str(tmp_path / "data"), ["val/lindau/lindau_000000_000019"], (40, 72))
        opts = ["net.aux_loss.aux_plane=256"]
        protocol = ["--crop-size", "33", "--base-size", "64"]
    else:
        fixture = make_voc_fixture(str(tmp_path / "data"), [("2007_000000", (41, 54)), ("2007_000001", (54, 38))])
        opts, protocol = [SAME], []
    env = dict(os.environ, CKPT=str(ckpt), DATA_ROOT=fixture["root"], DEVICE="CPU")
    script = os.path.join(REPO_ROOT, "experiments", *experiment.split("/"), "ours", "eval.sh")
    result = subprocess.run(
        ["bash", script, "--no-progress", *protocol, "--metrics", str(tmp_path / "metrics.json"), "--opts",
         "net.encoder.type=core.models.resnet.resnet18", f"dataset.val.data_list={fixture['lists']['val']}", *opts],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]), lines[-1]
    notes = [line for line in lines if line.startswith("note: ")]
    if city:
        assert len(notes) == 2 and "read as zeros" in notes[0] and f"--opts {SAME}" in notes[1], notes
    else:
        assert len(notes) == 1 and "pad_mode='same' as the release" in notes[0], notes


def test_a_bad_stem_pool_value_is_one_line(city, tmp_path):
    result = run_module("ms_semiseg", "export", "--config", city["cfg_path"], "--ckpt", city["ckpt"],
                        "--out", tmp_path / "m", "--height", "33", "--width", "33", "--device", "CPU",
                        "--opts", "net.encoder.kwargs.stem_pool=ceil")
    assert_user_error(result, "net.encoder.kwargs.stem_pool: 'ceil', expected 'pytorch'", "'same'")
    assert not os.path.exists(tmp_path / "m.mindir")
