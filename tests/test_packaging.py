"""`pip install .` / `pip install -e .`: a wheel holding only `ms_semiseg` (the converter as ms_semiseg.convert), and
the commands `ms-semiseg` and `ms-semiseg-convert` working in a fresh venv outside the repository.

Offline: the wheel is built from a copy of the sources with --no-build-isolation (this venv's setuptools), and the
fresh venv gets the dependencies by a .pth line pointing at this venv's site-packages (`--no-deps --no-index`).
About 15 s."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

from tests.helpers import REPO_ROOT, run_module

TIMEOUT = 60  # seconds, for each pip / command run


def _run(cmd, cwd, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("GLOG_v", "3")
    env["PIP_NO_INDEX"], env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1", "1"
    result = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    if check:
        assert result.returncode == 0, (cmd, result.stdout[-3000:], result.stderr[-3000:])
    return result


def _copy_sources(dest):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), dest)
    for name in ("ms_semiseg", "convert"):
        shutil.copytree(os.path.join(REPO_ROOT, name), os.path.join(dest, name), ignore=ignore)
    return dest


def _fresh_venv(folder):
    """A venv without pip whose only extra path is this venv's site-packages (the dependencies, offline)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=TIMEOUT)
    python = os.path.join(folder, "bin", "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(purelib, "_test_deps.pth"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(sorted(deps)) + "\n")
    return python


def _pip_install(python, *args, cwd):
    return _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q",
                 *args], cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("packaging")
    src = _copy_sources(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "wheels"], root)
    (wheel,) = (root / "wheels").glob("ms_semiseg-*.whl")
    python = _fresh_venv(root / "venv")
    _pip_install(python, wheel, cwd=root)
    outside = root / "elsewhere"  # no convert/ or ms_semiseg/ folder here: only the installed package can answer
    outside.mkdir()
    return {"root": root, "src": src, "wheel": wheel, "bin": root / "venv" / "bin", "python": python,
            "outside": outside}


def test_wheel_holds_only_the_ms_semiseg_package(built):
    with zipfile.ZipFile(built["wheel"]) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"ms_semiseg", next(n for n in names if ".dist-info/" in n)
                                                .split("/")[0]}
    assert {"ms_semiseg/convert/cli.py", "ms_semiseg/convert/parity.py", "ms_semiseg/eval/published.json",
            "ms_semiseg/converter.py"} <= set(names)
    assert "ms-semiseg = ms_semiseg.cli:main" in entry_points
    assert "ms-semiseg-convert = ms_semiseg.convert.cli:main" in entry_points


def test_installed_commands_work_outside_the_repo(built):
    out, bin_dir = built["outside"], built["bin"]
    top = _run([bin_dir / "ms-semiseg", "--help"], out).stdout
    assert top.startswith("usage: ms-semiseg ")
    for command in ("eval", "infer", "export", "train", "split", "init-protos", "convert", "report"):
        assert f"    {command}" in top, command
    assert "--ckpt" in _run([bin_dir / "ms-semiseg", "eval", "--help"], out).stdout
    converter = _run([bin_dir / "ms-semiseg", "convert", "--help"], out).stdout
    assert converter.startswith("usage: ms-semiseg convert ") and "pth2ckpt" in converter
    assert "safetensors" in _run([bin_dir / "ms-semiseg-convert", "pth2ckpt", "--help"], out).stdout
    assert _run([bin_dir / "ms-semiseg-convert", "--help"], out).stdout.startswith("usage: ms-semiseg-convert ")
    # the installed modules, and no bare `convert` module
    where = _run([built["python"], "-c", "import ms_semiseg, ms_semiseg.convert.cli as c; print(ms_semiseg.__file__);"
                  " print(c.__file__)"], out).stdout.split()
    assert all(path.startswith(str(built["root"] / "venv")) for path in where), where
    assert _run([built["python"], "-c", "import convert"], out, check=False).returncode != 0


def test_installed_report_finds_its_published_numbers(built, tmp_path):
    folder = tmp_path / "experiments" / "pascal" / "92" / "ours"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"dataset": "pascal", "num_classes": 21, "miou": 71.0, "miou_proto": 70.0}')
    result = _run([built["bin"] / "ms-semiseg", "report"], tmp_path)
    assert "| 92 | PCR (ours) | linear | 71.00 | 70.06 | 70.78 | +0.94 | +0.22 | - |" in result.stdout


def test_editable_install_serves_the_converter_from_the_source_folder(built):
    python = _fresh_venv(built["root"] / "venv-editable")
    _pip_install(python, "--no-build-isolation", "-e", built["src"], cwd=built["root"])
    out = built["outside"]
    path = _run([python, "-c", "import ms_semiseg.convert as c; print(c.__file__)"], out).stdout.strip()
    assert path == str(built["src"] / "convert" / "__init__.py")
    bin_dir = built["root"] / "venv-editable" / "bin"
    assert "pth2ckpt" in _run([bin_dir / "ms-semiseg", "convert", "--help"], out).stdout
    assert "pth2ckpt" in _run([bin_dir / "ms-semiseg-convert", "--help"], out).stdout


def test_pyproject_lists_every_subpackage():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {"ms_semiseg." + os.path.relpath(folder, os.path.join(REPO_ROOT, "ms_semiseg")).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(REPO_ROOT, "ms_semiseg")) if "__init__.py" in files}
    found = {name.replace("ms_semiseg..", "ms_semiseg") for name in found} | {"ms_semiseg.convert"}
    assert listed == found
    assert project["tool"]["setuptools"]["package-dir"] == {"ms_semiseg.convert": "convert"}


def test_repo_commands_keep_working():
    """From the repository (PYTHONPATH = repo root): `python -m convert` and `python -m ms_semiseg convert`."""
    direct = run_module("convert", "--help", timeout=TIMEOUT)
    assert direct.returncode == 0 and direct.stdout.startswith("usage: python -m convert ")
    nested = run_module("ms_semiseg", "convert", "ckpt2pth", "--help", timeout=TIMEOUT)
    assert nested.returncode == 0 and nested.stdout.startswith("usage: python -m ms_semiseg convert ckpt2pth")
    top = run_module("ms_semiseg", "--help", timeout=TIMEOUT)
    assert top.returncode == 0 and "    convert" in top.stdout and "    report" in top.stdout
