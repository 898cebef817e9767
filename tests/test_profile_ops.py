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
    # the evaluation forward's operators (--eval)
    ("BatchNorm", "batchnorm"), ("_native_batch_norm_legit_no_training", "batchnorm"),
    ("ResizeBilinearV2", "bilinear resize"), ("upsample_bilinear2d", "bilinear resize"),
    ("_slow_conv2d_forward", "conv forward"), ("ArgMaxWithValue", "reduction"), ("linalg_vector_norm", "reduction"),
    ("Transpose", "data movement"), ("RealDiv", "elementwise"),
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


def test_eval_table_names_forwards_and_reports_compile_and_rss():
    results = {
        "mindspore": {"first_ms": 30.0, "wall_ms": 10.0, "profiled_wall_ms": 11.0, "cpu_ms": 9.0,
                      "profiled_cpu_ms": 10.0, "unprofiled_rss_mb": 300.0,
                      "peak_rss_mb": 320.0, "peak_alloc_mb": 100.0,
                      "ops": {"Conv2D": {"kind": "conv forward", "ms": 8.0, "calls": 3},
                              "BatchNorm": {"kind": "batchnorm", "ms": 2.0, "calls": 3}}},
        "torch": {"first_ms": 6.0, "wall_ms": 5.0, "profiled_wall_ms": 5.5, "cpu_ms": 4.5, "profiled_cpu_ms": 5.0,
                  "unprofiled_rss_mb": 200.0,
                  "peak_rss_mb": 210.0,
                  "ops": {"mkldnn_convolution": {"kind": "conv forward", "ms": 4.0, "calls": 3}}}}
    lines = profile_ops.kind_table(results, unit="forward")
    assert lines[0] == "| operator kind | MindSpore ms/forward | PyTorch ms/forward | ratio MS/PT |"
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]] for line in lines[2:]}
    assert rows["batchnorm"] == ["2.0", "-", "-"]
    assert rows["**forward wall time, unprofiled**"] == ["10.0", "5.0", "2.00"]
    assert rows["forward CPU time, unprofiled"] == ["9.0", "4.5", "2.00"]
    assert rows["first forward (MindSpore: graph compile + run)"] == ["30.0", "6.0", "5.00"]
    assert rows["compile / set-up (first forward - unprofiled forward)"] == ["20.0", "1.0", "20.00"]
    assert profile_ops.top_ops(results["mindspore"], 1, "forward")[2] == "| Conv2D | conv forward | 3 | 8.0 |"
    line = profile_ops.rss_line(results)
    assert "MindSpore 300 MiB, PyTorch 200 MiB (1.50x)" in line and "MindSpore 320 MiB" in line


def test_eval_defaults_to_the_voc_config_and_its_encoder():
    args = profile_ops.parse_args(["--eval"])
    assert args.config == profile_ops.VOC_CONFIG and args.arch == "resnet101" and args.size == [375, 500]
    args = profile_ops.parse_args(["--eval", "--arch", "resnet18", "--size", "129", "129"])
    assert args.arch == "resnet18" and args.size == [129, 129]
    args = profile_ops.parse_args([])
    assert args.config == profile_ops.DEMO_CONFIG and args.arch == "resnet18"
    with pytest.raises(SystemExit):
        profile_ops.parse_args(["--eval", "--semi"])
    assert profile_ops.parse_args(["--eval"]).strategy == "static"
    assert profile_ops.parse_args(["--eval", "--strategy", "pynative"]).strategy == "pynative"


def test_rss_stage_table_gives_each_stage_its_own_increase():
    rows = profile_ops.train_speed.rss_stage_table([35, 400, 520, 1120, 1125], [35, 225, 350, 540, 575])
    cells = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows[2:]]
    assert [row[0] for row in cells] == list(profile_ops.train_speed.RSS_STAGES)
    assert cells[1][1:] == ["400 (+365)", "225 (+190)", "1.78x"]
    assert cells[3][1:] == ["1120 (+600)", "540 (+190)", "2.07x"]


def stage_rows(stdout, stages):
    """{stage: (MindSpore MiB, PyTorch MiB)} of the printed peak-RSS-by-stage table."""
    rows = {}
    for line in stdout.split("peak RSS by stage")[-1].splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if cells and cells[0] in stages:
            rows[cells[0]] = tuple(float(cell.split()[0]) for cell in cells[1:3])
    assert list(rows) == list(stages), stdout[-2000:]
    for side in (0, 1):  # ru_maxrss only grows, stage by stage
        values = [rows[stage][side] for stage in stages]
        assert values == sorted(values) and values[0] > 0, values
    return rows


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
    stage_rows(out.stdout, profile_ops.train_speed.RSS_STAGES)


@pytest.mark.slow
def test_tiny_eval_run_prints_both_sides():
    """One real evaluation forward per side, ResNet-18 VOC model at 33x33 (about a minute on 2 cores: the compile)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "profile_ops.py"), "--eval", "--arch",
                          "resnet18", "--size", "33", "33", "--steps", "1", "--warmup", "0", "--threads", "1",
                          "--top", "3"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 4:
            rows.setdefault(cells[0], cells[1:])
    for kind in ("conv forward", "bilinear resize", "**forward wall time, unprofiled**",
                 "first forward (MindSpore: graph compile + run)"):
        assert float(rows[kind][0]) > 0 and float(rows[kind][1]) > 0, (kind, rows[kind])
    assert "conv backward" not in rows and "optimizer" not in rows  # a forward, nothing of training
    assert "Top 3 operators, MindSpore" in out.stdout and "Top 3 operators, PyTorch" in out.stdout
    stage_rows(out.stdout, profile_ops.EVAL_RSS_STAGES)
    assert "peak RSS before profiling: MindSpore" in out.stdout
