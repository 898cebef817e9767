"""`export --format onnx`: the ONNX file of a tiny VOC model (ResNet-18, prototype head) run by onnxruntime (CPU)
against the MindSpore logits at two input sizes (one file per size: the exported graph has a fixed input size),
the equivalent formulations the ONNX network is built from, and the bad inputs of the export command."""
import copy

import numpy as np
import pytest
import torch

from ms_semiseg.config import load_config, net_config
from tests.helpers import VOC_CONFIG, assert_float32_close, assert_user_error, run_module, tiny_config, write_config

# odd and even sizes in both axes: the stem's ceil-mode max-pool pads differently for each parity
SIZES = [(33, 48), (48, 41)]
ONNX_ATOL = 1e-4  # issue 17: onnxruntime logits within 1e-4 of MindSpore's


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        pytest.skip(f"onnxruntime is not importable ({exc}): `pip install onnxruntime` (in requirements.txt)")
    return onnxruntime


def _session(path):
    ort = _onnxruntime()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def voc_model(tmp_path_factory):
    """A tiny VOC config (ResNet-18 DeepLabv3+, prototype head), a random torch reference model and its converted
    MindSpore checkpoint (the converter's mapping)."""
    from convert import mapping
    from convert.reference import random_reference_model
    from ms_semiseg.eval.predictor import prepare_device
    from ms_semiseg.utils.checkpoint import save_params_atomic
    prepare_device("CPU")
    folder = tmp_path_factory.mktemp("onnx")
    config_path = write_config(tiny_config(VOC_CONFIG), str(folder / "exp"))
    cfg = load_config(config_path)
    torch_model = random_reference_model(net_config(cfg), seed=0)
    params = mapping.torch_to_ms({k: v.detach().numpy() for k, v in torch_model.state_dict().items()})
    ckpt = str(folder / "model.ckpt")
    save_params_atomic(params, ckpt)
    return dict(folder=folder, config=config_path, cfg=cfg, ckpt=ckpt, torch_model=torch_model)


def _mindspore_logits(cfg, ckpt, x):
    import mindspore as ms
    from ms_semiseg.eval.predictor import load_model
    from ms_semiseg.models import SegmentationInference
    pred, proto = SegmentationInference(load_model(cfg, ckpt, say=lambda line: None))(ms.Tensor(x))
    return {"pred": pred.asnumpy(), "proto": None if proto is None else proto.asnumpy()}


def _torch_logits(torch_model, x):
    from ms_semiseg.eval.reference import torch_predict
    out32 = torch_predict(torch_model)(torch.from_numpy(x))
    out64 = torch_predict(copy.deepcopy(torch_model).double())(torch.from_numpy(x).double())
    return {head: (out32[head].numpy(), out64[head].numpy()) for head in out32}


@pytest.mark.numeric
@pytest.mark.parametrize("height, width", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_onnx_export_runs_in_onnxruntime_with_the_mindspore_logits(voc_model, tmp_path, height, width):
    _onnxruntime()  # skip before the export when onnxruntime is missing
    out = tmp_path / "model.onnx"
    result = run_module("ms_semiseg", "export", "--config", voc_model["config"], "--ckpt", voc_model["ckpt"],
                        "--format", "onnx", "--out", out, "--height", height, "--width", width, "--device", "CPU")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("ONNX -> ") and "outputs: pred, proto" in result.stdout
    session = _session(out)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape == [1, 3, height, width]
    assert len(session.get_outputs()) == 2  # pred, proto in this order

    x = np.random.default_rng(height * 1000 + width).normal(size=(1, 3, height, width)).astype(np.float32)
    got = dict(zip(("pred", "proto"), session.run(None, {"image": x})))
    ours = _mindspore_logits(voc_model["cfg"], voc_model["ckpt"], x)
    reference = _torch_logits(voc_model["torch_model"], x)
    for head in ("pred", "proto"):
        assert got[head].shape == ours[head].shape == (1, 21, height, width), head
        diff = float(np.abs(got[head] - ours[head]).max())
        print(f"{head} {height}x{width}: |onnxruntime - MindSpore| {diff:.2e} (logits up to "
              f"{np.abs(ours[head]).max():.2f})")
        assert diff <= ONNX_ATOL, (head, diff)
        # and, like every other implementation in the suite, within the float32 floor of the float64 reference
        assert_float32_close(got[head], *reference[head], what=f"onnxruntime {head} {height}x{width}")


@pytest.mark.numeric
def test_onnx_heads_and_stem_pools(voc_model, tmp_path):
    """--head proto / linear keep one named output; the release's stem pool ('same') and a model without a
    prototype head export too, all with the MindSpore logits (in-process, one size)."""
    from ms_semiseg.eval.export import export_onnx, onnx_network
    from ms_semiseg.eval.predictor import load_model
    import mindspore as ms
    _onnxruntime()
    height, width = SIZES[0]
    x = np.random.default_rng(7).normal(size=(1, 3, height, width)).astype(np.float32)
    no_proto = tiny_config(VOC_CONFIG)
    del no_proto["net"]["proto_head"]
    cases = [
        ("proto", voc_model["cfg"], voc_model["ckpt"], ["proto"]),
        ("linear", voc_model["cfg"], voc_model["ckpt"], ["pred"]),
        ("both", load_config(voc_model["config"], ["net.encoder.kwargs.stem_pool=same"]), voc_model["ckpt"],
         ["pred", "proto"]),
        ("both", load_config(write_config(no_proto, str(tmp_path / "no_proto"))), None, ["pred"]),
    ]
    for index, (head, cfg, ckpt, names) in enumerate(cases):
        if ckpt is None:  # the model without a prototype head: its own random weights
            from ms_semiseg.models import create_model
            from ms_semiseg.utils.checkpoint import save_params_atomic
            ckpt = str(tmp_path / "no_proto.ckpt")
            save_params_atomic({p.name: p.data for p in create_model(net_config(cfg)).get_parameters()}, ckpt)
        path = str(tmp_path / f"case{index}.onnx")
        network = onnx_network(load_model(cfg, ckpt, say=lambda line: None), height, width, head)
        export_onnx(network, ms.Tensor(x), path)
        session = _session(path)
        assert len(session.get_outputs()) == len(names), (index, head)
        got = dict(zip(names, session.run(None, {"image": x})))
        ours = _mindspore_logits(cfg, ckpt, x)
        for name in names:
            diff = float(np.abs(got[name] - ours[name]).max())
            print(f"case {index} ({head}) {name}: |onnxruntime - MindSpore| {diff:.2e}")
            assert diff <= ONNX_ATOL, (index, head, name, diff)


def test_ceil_max_pool_formulation_equals_the_pytorch_stem_pool():
    """The ONNX-ready stem pool (explicit -inf pad + valid pool) gives the same values as the ceil-mode pool, bit for
    bit, for odd and even sizes and all-negative inputs (where the padding value matters)."""
    import mindspore as ms
    from ms_semiseg.eval.predictor import prepare_device
    from ms_semiseg.models.layers import CeilMaxPool3x3s2, max_pool_3x3_s2
    prepare_device("CPU")
    rng = np.random.default_rng(0)
    for height, width in [(7, 7), (8, 8), (7, 10), (10, 9), (2, 3), (1, 1)]:
        x = rng.normal(size=(2, 3, height, width)).astype(np.float32) - 5.0
        want = max_pool_3x3_s2("pytorch")(ms.Tensor(x)).asnumpy()
        got = CeilMaxPool3x3s2()(ms.Tensor(x)).asnumpy()
        assert got.shape == want.shape == (2, 3, height // 2 + 1, width // 2 + 1)
        np.testing.assert_array_equal(got, want)


def test_export_bad_format_and_output_are_one_line_errors(voc_model, tmp_path):
    common = ("--config", voc_model["config"], "--ckpt", voc_model["ckpt"], "--height", 33, "--width", 33,
              "--device", "CPU")
    assert_user_error(run_module("ms_semiseg", "export", *common, "--format", "pb", "--out", tmp_path / "m"),
                      "--format pb", "mindir, onnx")
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert_user_error(run_module("ms_semiseg", "export", *common, "--format", "onnx",
                                 "--out", blocker / "out" / "model.onnx"), str(blocker / "out"), "writable")
    assert_user_error(run_module("ms_semiseg", "export", *common, "--head", "aux", "--out", tmp_path / "m.onnx"),
                      "--head aux", "both, linear, proto")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
