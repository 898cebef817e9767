import os
import shutil
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("GLOG_v", "3")

# Older-ISA mode (`bash scripts/test.sh --old-isa`, or MS_SEMISEG_TEST_ISA=AVX|SSE41 with plain pytest): oneDNN, in
# MindSpore and in torch, is held to that ISA, so its convolutions and matmuls run other kernels than in the default
# run (measured: other bits for AVX and SSE41 than for AVX2), and only the tests marked `numeric` run. A test that
# passes on one kernel choice only fails here before it fails on a CI machine with another CPU. This must win over
# `import ms_semiseg`'s own AVX2 cap (a setdefault) and over an ONEDNN_MAX_CPU_ISA in the caller's environment, and
# it has to be set before the first oneDNN primitive, i.e. here, before any test module imports MindSpore or torch;
# subprocesses (command-line tests, msrun workers) inherit it.
TEST_ISA = os.environ.get("MS_SEMISEG_TEST_ISA", "").strip().upper()
if TEST_ISA:
    os.environ["ONEDNN_MAX_CPU_ISA"] = TEST_ISA
import ms_semiseg  # noqa: E402,F401  (sets ONEDNN_MAX_CPU_ISA before any MindSpore op runs)

NUMERIC_MARKER = ("numeric: compares floats of two implementations or kernels (MindSpore vs PyTorch, graph vs "
                  "PyNative, ...) with float32-floor tolerances and margin-checked argmax/thresholds; rerun with "
                  "oneDNN held to an older ISA by `bash scripts/test.sh --old-isa`")


def pytest_configure(config):
    config.addinivalue_line("markers", NUMERIC_MARKER)
    config.addinivalue_line("markers", "slow: takes more than 30 s on 2 CPU cores (deselect with -m 'not slow')")


def pytest_report_header(config):
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "(oneDNN default)")
    if TEST_ISA:
        return f"older-ISA mode: ONEDNN_MAX_CPU_ISA={isa}, numeric tests only"
    return f"ONEDNN_MAX_CPU_ISA={isa}"


def pytest_collection_modifyitems(config, items):
    if not TEST_ISA:
        return
    selected = [item for item in items if item.get_closest_marker("numeric")]
    deselected = [item for item in items if not item.get_closest_marker("numeric")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture
def graph_mode():
    """Compiled graphs as in training; other tests expect MindSpore's default PyNative mode back."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="module", autouse=True)
def remove_module_folders(request, tmp_path_factory):
    """Removes what a module's tests wrote under pytest's base folder once the module is done, if none of them
    failed. The module-scoped fixtures (trained runs, converted checkpoints, compiled packages) would otherwise stay
    until the end of the run: several GB in all, which filled a CI disk. pyproject.toml's tmp_path_retention_policy
    already removes a passing test's own tmp_path. Runs first and is torn down last among a module's fixtures (an
    autouse fixture of the widest scope), so everything the module made is there to remove; a session-scoped
    fixture writing under the base folder would be removed with it (the suite has none)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failures_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failures_before:
        return  # keep everything for inspection
    for path in set(base.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_v", "3")
    return env
