"""Small shared helpers for tests: tiny configs and running the command lines."""
import copy
import os
import subprocess
import sys

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
