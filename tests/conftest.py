import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("GLOG_v", "3")
import ms_semiseg  # noqa: E402,F401  (sets ONEDNN_MAX_CPU_ISA before any MindSpore op runs)


@pytest.fixture
def graph_mode():
    """Compiled graphs as in training; other tests expect MindSpore's default PyNative mode back."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_v", "3")
    return env
