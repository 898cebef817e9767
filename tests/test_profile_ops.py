"""bench/profile_ops.py: the operator-kind mapping, the side-by-side table, and one tiny real run of both sides."""
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
import profile_ops  # noqa: E402


@pytest.mark.parametrize("name, kind", [
    ("Conv2D", "conv forward"), ("mkldnn_convolution", "conv forward"),
    ("Conv2DBackpropInput", "conv backward"), ("Conv2DBackpropFilter", "conv backward"),
    ("convolution_backward", "conv backward"),
    ("BatchNormGrad", "batchnorm"), ("native_batch_norm", "batchnorm"),
    ("ResizeBilinearGrad", "bilinear resize"), ("upsample_bilinear2d_backward", "bilinear resize"),
    ("MaxPool3DWithArgmax", "pooling"), ("max_pool2d_with_indices", "pooling"),
    ("LogSoftmax", "loss/softmax"), ("nll_loss2d_forward", "loss/softmax"),
    ("ReLU", "elementwise"), ("threshold_backward", "elementwise"), ("add_", "elementwise"),
    ("Concat", "data movement"), ("cat", "data movement"), ("copy_", "data movement"),
    ("ReduceMean", "reduction"), ("sum", "reduction"), ("MatMul", "matmul"), ("mm", "matmul"),
])
def test_operator_kinds(name, kind):
    assert profile_ops.classify(name) == kind


def test_table_rows_and_overhead():
    results = {
        "mindspore": {"wall_ms": 9.0, "profiled_wall_ms": 10.0,
                      "ops": {"Conv2D": {"kind": "conv forward", "ms": 6.0, "calls": 2}}},
        "torch": {"wall_ms": 5.0, "profiled_wall_ms": 6.0,
                  "ops": {"mkldnn_convolution": {"kind": "conv forward", "ms": 3.0, "calls": 2},
                          "add_ (optimizer)": {"kind": "optimizer", "ms": 1.0, "calls": 4}}}}
    lines = profile_ops.kind_table(results)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]] for line in lines[2:]}
    assert rows["conv forward"] == ["6.0", "3.0", "2.00"]
    assert rows["optimizer"] == ["-", "1.0", "-"]
    assert rows[profile_ops.OVERHEAD] == ["4.0", "2.0", "2.00"]  # profiled wall - sum of op times
    assert rows["**step wall time, unprofiled**"] == ["9.0", "5.0", "1.80"]


@pytest.mark.slow
def test_tiny_run_prints_both_sides():
    """One real step per side at 32x32, batch 2 (about 30 s on 2 cores)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "profile_ops.py"), "--crop", "32",
                          "--batch", "2", "--steps", "1", "--warmup", "0", "--top", "5"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[0] in profile_ops.KIND_ORDER + [profile_ops.OVERHEAD]:
            rows.setdefault(cells[0], cells[1:])
    for kind in ("conv forward", "conv backward", "batchnorm", "optimizer"):
        ours, theirs, ratio = (float(cell) for cell in rows[kind])
        # both sides measured something; the printed ratio is ours / theirs up to the rounding of the printed
        # times (0.05 ms) and of the ratio (0.005). Magnitudes are not checked: a loaded machine moves them by 100x
        assert ours > 0 and theirs > 0, (kind, rows[kind])
        slack = 0.005 + (0.05 / ours + 0.05 / theirs) * ours / theirs
        assert abs(ratio - ours / theirs) <= slack, (kind, rows[kind])
    assert profile_ops.OVERHEAD in rows
    assert "Top 5 operators, MindSpore" in out.stdout and "Top 5 operators, PyTorch" in out.stdout
