"""Logit parity of the full ResNet-101 models: PyTorch reference vs the converted MindSpore model, every head, in
eval mode, fp32, at the upstream crop sizes and at an even-stem VOC size (the max-pool ceil_mode case).

Machine-independent by construction: logits to ATOL (4x the measured 2.0-3.0e-5, which the fp64 test shows is
float32 rounding), the argmax at every decisive pixel (top-2 margin > 2*ATOL), and the near-tie pixels, which other
kernels may flip, only bounded in number (with ONEDNN_MAX_CPU_ISA=AVX instead of AVX2 one pixel flips in VOC
`pred_full` at 375x500 and at 769x769, and one of the 11970 `pred` pixels of the command-line test)."""
import os

import numpy as np
import pytest

from convert.parity import compare_heads, ms_heads, ms_model_from_torch, top2_margin, torch_heads
from convert.reference import random_reference_model
from ms_semiseg.config import load_config, net_config
from ms_semiseg.device import gpu_unavailable_reason
from tests.helpers import CITY_CONFIG, REPO_ROOT, VOC_CONFIG, parse_fields, run_module

pytestmark = pytest.mark.numeric

ATOL = 1e-4  # `convert parity --atol`'s default
# At least this fraction of every head's pixels must be decisive, so that the argmax check covers nearly all of them
# (a property of the test data: measured >= 0.9994, the stride-8 `aux` head with its small logits 0.9972).
DECISIVE_FRACTION = 0.99
RAW_AGREEMENT = 0.999  # the command line's raw agreement: at most 0.1% near-tie pixels may flip
SIZES = [(513, 513), (769, 769), (375, 500)]


def _pair(config_path, device):
    import mindspore as ms
    ms.set_device(device)
    cfg = load_config(config_path)
    ref = random_reference_model(net_config(cfg), seed=0)
    if device == "GPU":
        ref = ref.cuda()
    return ref, ms_model_from_torch(cfg, ref)


@pytest.fixture(scope="module", params=[VOC_CONFIG, CITY_CONFIG], ids=["voc", "cityscapes"])
def cpu_pair(request):
    return request.param, _pair(request.param, "CPU")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_full_model_parity_cpu(cpu_pair, size):
    config_path, (ref, net) = cpu_pair
    x = np.random.default_rng(sum(size)).standard_normal((1, 3, *size)).astype(np.float32)
    ref_heads = torch_heads(ref, x, "cpu")
    report = compare_heads(ref_heads, ms_heads(net, x), ATOL)
    expected_heads = {"pred", "pred_full", "proto"} | ({"aux"} if config_path == CITY_CONFIG else set())
    assert set(report) == expected_heads
    for head, (diff, agreement, decisive, shape) in report.items():
        decisive_fraction = float((top2_margin(ref_heads[head]) > 2 * ATOL).mean())
        print(f"{head} {shape}: max_abs_diff={diff:.3e} argmax_agreement={agreement} decisive={decisive} "
              f"decisive_fraction={decisive_fraction}")
        assert diff <= ATOL, (head, diff)
        assert decisive == 1.0, (head, decisive)
        # only near-tie pixels may differ, and they are few: agreement >= the decisive fraction >= DECISIVE_FRACTION
        assert decisive_fraction >= DECISIVE_FRACTION, (head, decisive_fraction)
        assert agreement >= decisive_fraction, (head, agreement, decisive_fraction)


def test_head_planes_parity_demo_config():
    """net.decoder.kwargs.head_planes (the demo's 64, upstream's fixed 256) builds the same decoder on both sides
    (bench/train_speed.py and bench/profile_ops.py compare training steps of the demo model)."""
    ref, net = _pair(os.path.join(REPO_ROOT, "experiments", "demo", "ours", "config.yaml"), "CPU")
    assert ref.decoder.head[0].out_channels == 64
    x = np.random.default_rng(0).standard_normal((2, 3, 80, 80)).astype(np.float32)
    report = compare_heads(torch_heads(ref, x, "cpu"), ms_heads(net, x), ATOL)
    for head, (diff, _, decisive, _) in report.items():
        assert diff <= ATOL and decisive == 1.0, (head, diff, decisive)


def _gpu_skip_reason():
    reason = gpu_unavailable_reason()
    if reason:
        return f"MindSpore cannot use a GPU: {reason}"
    import torch
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (CPU build of torch)"
    return None


@pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_full_model_parity_gpu(size):
    ref, net = _pair(VOC_CONFIG, "GPU")
    x = np.random.default_rng(sum(size)).standard_normal((1, 3, *size)).astype(np.float32)
    report = compare_heads(torch_heads(ref, x, "cuda"), ms_heads(net, x), ATOL)
    for head, (diff, _, decisive, _) in report.items():
        assert diff <= ATOL and decisive == 1.0, (head, diff, decisive)


def test_port_error_is_at_the_float32_floor(cpu_pair):
    """Scale-free check: against torch run in float64, the MindSpore fp32 model is no further than 2x torch's own fp32
    result is, for every head (a port error would stand far above torch's rounding)."""
    import copy
    import torch
    _, (ref, net) = cpu_pair
    x = np.random.default_rng(7).standard_normal((1, 3, 161, 200)).astype(np.float32)
    ref32, ours = torch_heads(ref, x, "cpu"), ms_heads(net, x)
    ref64 = torch_heads(copy.deepcopy(ref).double(), x, "cpu", dtype=torch.float64)
    for head in ref32:
        torch_err = np.abs(ref32[head] - ref64[head]).max()
        ms_err = np.abs(ours[head] - ref64[head]).max()
        print(f"{head}: torch32 {torch_err:.2e} mindspore32 {ms_err:.2e}")
        assert ms_err <= 2 * torch_err + 1e-6, (head, ms_err, torch_err)


def test_parity_command_line_even_stem_size():
    """The issue's acceptance command: exits 0 and ends with the parity line, whose figures are compared as numbers
    against the machine-independent quantities. The raw argmax agreement depends on the CPU's kernels (measured
    1.000000 with oneDNN capped at AVX2, 0.999916 = one near-tie `pred` pixel of 95x126 with AVX), so it is only
    held to RAW_AGREEMENT: at most 0.1% of the pixels may flip (> 0.9999 allowed just one pixel of this head)."""
    result = run_module("convert", "parity", "--config", VOC_CONFIG, "--height", "375", "--width", "500")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    print(last)
    assert last.startswith("parity: max_abs_diff="), last
    fields = parse_fields(last)
    assert set(fields) == {"max_abs_diff", "argmax_agreement", "decisive_agreement"}, last
    assert fields["max_abs_diff"] <= ATOL, last
    assert fields["decisive_agreement"] == 1.0, last  # printed rounded down: 1.000000 only when every pixel agrees
    assert fields["argmax_agreement"] >= RAW_AGREEMENT, last
