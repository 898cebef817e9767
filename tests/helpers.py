"""Small shared helpers for tests: tiny configs and running the command lines."""
import copy
import os
import subprocess
import sys

import numpy as np
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
CITY_CONFIG = os.path.join(REPO_ROOT, "experiments", "cityscapes", "186", "ours", "config.yaml")


def load_yaml(path):
    with open(path, "r", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def tiny_config(base=VOC_CONFIG, arch="resnet18", **net_overrides):
    """The upstream config with a small encoder, for fast tests."""
    cfg = copy.deepcopy(load_yaml(base))
    cfg["net"]["encoder"]["type"] = f"core.models.resnet.{arch}"
    if arch in ("resnet18", "resnet34") and "aux_loss" in cfg["net"]:
        cfg["net"]["aux_loss"]["aux_plane"] = 256
    cfg["net"].update(net_overrides)
    return cfg


def point_at_data(cfg, root, labeled_list, val_list, crop=33):
    """Points a config's train/val sections at a fixture (random crop for training, center crop for validation,
    both crop x crop), as the tiny training tests use it."""
    dataset = cfg["dataset"]
    dataset["train"].update(data_root=root, data_list=labeled_list, crop={"type": "rand", "size": [crop, crop]})
    dataset["val"].update(data_root=root, data_list=val_list, crop={"type": "center", "size": [crop, crop]})
    return dataset


def write_config(cfg, folder, name="config.yaml"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cfg, handle, sort_keys=False)
    return path


def run_module(module, *args, cwd=REPO_ROOT, timeout=900, env=None):
    """Runs `python -m module args...`; returns CompletedProcess with text output."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("GLOG_v", "3")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(result, *fragments):
    """Exit code 2, one line on stderr naming the culprit, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------ machine-independent numerics
# Two float32 implementations (MindSpore vs PyTorch, graph vs PyNative, another oneDNN kernel on another CPU) agree
# only to float32 rounding. Tests therefore compare values with tolerances taken from the float32 floor (the
# rounding of the reference itself, measured against float64), and discrete decisions (argmax, thresholds, sorting)
# only where the deciding margin exceeds that tolerance. `bash scripts/test.sh --old-isa` reruns the numeric tests
# with oneDNN held to an older ISA, i.e. with other kernels, to show what holds on one CPU only.
FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def float32_floor(ref32, ref64):
    """max |fp32 - fp64| of the same reference computation: the rounding any fp32 implementation may have."""
    return float(np.abs(np.asarray(ref32, np.float64) - np.asarray(ref64, np.float64)).max())


def top2_margin(values, axis=1):
    """Best minus second-best value along `axis` (class logits, scores)."""
    top2 = np.partition(np.asarray(values, np.float64), -2, axis=axis)
    return np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis)


def smallest_gap(values, cut):
    """Distance of the closest value to `cut`: a threshold decision is machine-independent when it exceeds the
    tolerance of the values."""
    return float(np.abs(np.asarray(values, np.float64) - cut).min())


def assert_well_posed(margin, tol, what):
    """The test's expected discrete outcome holds for every float32 implementation only when no deciding margin
    lies within the tolerance: fails (naming `what`) when the test data have a near tie, not the code."""
    margin = float(np.min(margin))
    print(f"well-posed? {what}: smallest margin {margin:.2e}, tolerance {tol:.2e}")  # shown with pytest -s
    assert margin > tol, f"ill-posed test data: {what} has a margin {margin:.3e} <= tolerance {tol:.3e}"


def parse_fields(line):
    """'name: a=1.5 b=2e-05' -> {'a': 1.5, 'b': 2e-05}: printed figures compared as numbers, never as strings."""
    return {key: float(value) for key, value in (item.split("=", 1) for item in line.split() if "=" in item)}


def float32_tol(ref32, ref64, factor=2.0, ulps=8):
    """How far from the float64 result a correct float32 implementation may be: `factor` x the reference's float32
    floor + `ulps` float32 ulps of the result's scale (see assert_float32_close)."""
    scale = float(np.abs(np.asarray(ref64, np.float64)).max())
    return factor * float32_floor(ref32, ref64) + ulps * FLOAT32_EPS * scale


def assert_float32_close(ours, ref32, ref64, what="", factor=2.0, ulps=8):
    """`ours` (float32, another implementation) is at most `factor` times as far from the float64 result as the
    float32 reference is (its float32 floor), plus `ulps` float32 ulps of the result's scale (a reference may round
    exactly by chance, a reduction in another order costs a few ulps). Scale-free and machine-independent: a port
    error stands orders of magnitude above. Returns (|ours - fp64|, floor) for printing."""
    ours, ref32, ref64 = (np.asarray(a, np.float64) for a in (ours, ref32, ref64))
    assert ours.shape == ref64.shape, (what, ours.shape, ref64.shape)
    floor = float32_floor(ref32, ref64)
    tol = float32_tol(ref32, ref64, factor, ulps)
    err = float(np.abs(ours - ref64).max())
    print(f"float32-close? {what}: max|ours - fp64| {err:.2e}, float32 floor {floor:.2e}, tolerance {tol:.2e}")
    assert err <= tol, (f"{what}: max|ours - fp64| = {err:.3e} > {factor} x float32 floor {floor:.3e} "
                        f"+ {ulps} ulp of {float(np.abs(ref64).max()):.3e} = {tol:.3e}")
    return err, floor
