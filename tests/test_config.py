"""Config loading: --opts overrides, type checks, path resolution and one-line errors."""
import os

import pytest

from ms_semiseg.config import load_config, require, resolve_path
from ms_semiseg.errors import UserError
from tests.helpers import VOC_CONFIG


def test_opts_override_values_with_yaml_types():
    cfg = load_config(VOC_CONFIG, ["trainer.epochs=2", "dataset.batch_size=4", "trainer.optimizer.kwargs.lr=1e-3",
                                   "net.decoder.kwargs.dilations=[6, 12, 18]", "dataset.train.flip=false"])
    assert cfg["trainer"]["epochs"] == 2 and cfg["dataset"]["batch_size"] == 4
    assert cfg["trainer"]["optimizer"]["kwargs"]["lr"] == pytest.approx(1e-3)  # YAML 1.1 alone reads a string
    assert cfg["net"]["decoder"]["kwargs"]["dilations"] == [6, 12, 18]
    assert cfg["dataset"]["train"]["flip"] is False


@pytest.mark.parametrize("opt, fragment", [
    ("trainer.epoch=2", "--opts trainer.epoch: no such config key"),
    ("nosection.x=1", "--opts nosection.x: no such config key"),
    ("trainer.epochs=abc", "wrong type str, expected int"),
    ("dataset.train.flip=3", "wrong type int, expected bool"),
    ("trainer.epochs", "expected key=value"),
])
def test_bad_opts_name_the_key(opt, fragment):
    with pytest.raises(UserError, match=None) as info:
        load_config(VOC_CONFIG, [opt])
    assert fragment in str(info.value)


def test_relative_paths_resolve_against_the_config_folder():
    cfg = load_config(VOC_CONFIG)
    root = resolve_path(cfg, cfg["dataset"]["val"]["data_root"])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert root == os.path.join(repo, "data", "VOC2012")
    assert resolve_path(cfg, "/abs/path") == "/abs/path"


@pytest.mark.parametrize("content, fragment", [
    ("net: [unclosed", "not valid YAML at line 1"),
    ("- a\n- b\n", "top level is list"),
])
def test_unreadable_configs(tmp_path, content, fragment):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_require_names_missing_and_mistyped_keys():
    cfg = load_config(VOC_CONFIG, ["net.num_classes=21"])
    with pytest.raises(UserError, match="missing key net.nothing, expected a int"):
        require(cfg, {"net.nothing": int})
    cfg["net"]["num_classes"] = "21"
    with pytest.raises(UserError, match="net.num_classes='21' has type str, expected a int"):
        require(cfg, {"net.num_classes": int})


def test_decoder_lr_times_follows_u2pl_unless_the_config_sets_it():
    """U2PL's rule (10x for pascal datasets, 1x otherwise) and the demo's `trainer.decoder_lr_times` override."""
    from ms_semiseg.engine.optim import decoder_lr_times
    assert decoder_lr_times({"dataset": {"type": "pascal_semi"}}) == 10
    assert decoder_lr_times({"dataset": {"type": "cityscapes_semi"}}) == 1
    assert decoder_lr_times({"dataset": {"type": "pascal_semi"}, "trainer": {"decoder_lr_times": 1}}) == 1.0
    for bad in (0, -2, "ten", True):
        with pytest.raises(UserError, match=r"trainer.decoder_lr_times: .*expected a positive number"):
            decoder_lr_times({"dataset": {"type": "pascal_semi"}, "trainer": {"decoder_lr_times": bad}})
