"""The demo's pretrained backbone (ckpt/demo/resnet18_source.ckpt, `python -m ms_semiseg.demo.pretrain`): the
shipped file is what its provenance says, fits the demo model stage by stage and stays under 20 MB; extraction
from a segmentor checkpoint and its errors."""
import hashlib
import json
import os

import mindspore as ms
import numpy as np
import pytest

from helpers import assert_user_error, run_module, tiny_config
from ms_semiseg.config import load_config, net_config
from ms_semiseg.demo.pretrain import DEFAULT_OUT, KEPT_STAGES, MAX_BYTES
from ms_semiseg.demo.specs import REPO_ROOT
from ms_semiseg.models import create_model
from ms_semiseg.utils.checkpoint import compare_to_model, model_shapes, read_checkpoint, save_params_atomic

SHIPPED = os.path.join(REPO_ROOT, DEFAULT_OUT)
DEMO_CONFIGS = [os.path.join(REPO_ROOT, "experiments", "demo", m, "config.yaml")
                for m in ("suponly", "meanteacher", "ours", "brpg")]


def test_shipped_backbone_matches_its_provenance_and_the_demo_model():
    provenance = json.loads(open(os.path.splitext(SHIPPED)[0] + ".json", encoding="utf-8").read())
    data = open(SHIPPED, "rb").read()
    assert len(data) == provenance["bytes"] <= MAX_BYTES
    assert hashlib.sha256(data).hexdigest() == provenance["sha256"]
    assert provenance["source_data"]["task"] == "source" and provenance["stages"] == list(KEPT_STAGES)
    params = read_checkpoint(SHIPPED)
    model = create_model(net_config(load_config(DEMO_CONFIGS[0])))
    expected = {name: shape for name, shape in model_shapes(model).items()
                if name.startswith("encoder.") and name.split(".")[1] in KEPT_STAGES}
    compare_to_model(params, expected, SHIPPED)  # every kept stage complete, nothing else
    assert all(np.isfinite(value.asnumpy()).all() for value in params.values())


def test_every_demo_method_starts_from_the_shipped_backbone():
    for path in DEMO_CONFIGS:
        cfg = load_config(path)
        pretrain = os.path.normpath(os.path.join(os.path.dirname(path), cfg["saver"]["pretrain"]))
        assert pretrain == SHIPPED, path


@pytest.fixture(scope="module")
def segmentor_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    ms.set_seed(5)
    model = create_model(tiny_config()["net"])
    arrays = {f"teacher.{p.name}": p.asnumpy() for p in model.get_parameters()}
    save_params_atomic(arrays, str(folder / "best.ckpt"))
    return folder, {name[len("teacher."):]: value for name, value in arrays.items()}


def test_extract_only_keeps_stem_to_layer3_of_a_segmentor_checkpoint(segmentor_ckpt):
    folder, arrays = segmentor_ckpt
    out = folder / "backbone.ckpt"
    result = run_module("ms_semiseg.demo.pretrain", "--extract-only", folder / "best.ckpt", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = {name: value.asnumpy() for name, value in read_checkpoint(str(out)).items()}
    expected = {name: value for name, value in arrays.items()
                if name.startswith("encoder.") and name.split(".")[1] in KEPT_STAGES}
    assert sorted(kept) == sorted(expected) and not any(".layer4." in name for name in kept)
    for name, value in expected.items():
        np.testing.assert_array_equal(kept[name], value, err_msg=name)
    provenance = json.loads((folder / "backbone.json").read_text())
    assert provenance["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_extract_only_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.ckpt"
    assert_user_error(run_module("ms_semiseg.demo.pretrain", "--extract-only", missing, "--out", tmp_path / "b.ckpt"),
                      str(missing))
    save_params_atomic({"decoder.x": np.zeros(3, np.float32)}, str(tmp_path / "decoder_only.ckpt"))
    assert_user_error(run_module("ms_semiseg.demo.pretrain", "--extract-only", tmp_path / "decoder_only.ckpt",
                                 "--out", tmp_path / "b.ckpt"), "holds no encoder.* weights")
