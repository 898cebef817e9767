"""Every bad input of `tests/bad_inputs.py` through the real command line: exit 2, one line naming the culprit,
no traceback, nothing written. Plus the faults that cannot be typed on a command line (full disk)."""
import errno
import os

import pytest

from tests.bad_inputs import CASES, TABLE_DOC, build_case, build_workspace
from tests.helpers import assert_user_error, run_module


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(str(tmp_path_factory.mktemp("bad_inputs")))


@pytest.mark.parametrize("case_id, fragment", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(workspace, tmp_path, case_id, fragment):
    argv = build_case(workspace, case_id, str(tmp_path))
    before = _tree(tmp_path) | _tree(workspace["root"])
    assert_user_error(run_module(*argv, timeout=600), fragment)
    assert (_tree(tmp_path) | _tree(workspace["root"])) == before, "the failed command left files behind"


def _tree(folder):
    return {os.path.join(base, name) for base, dirs, files in os.walk(folder) for name in files + dirs}


def test_docs_list_every_bad_input():
    table = open(TABLE_DOC, encoding="utf-8").read()  # docs/robustness.md
    missing = [what for _, what, _, _ in CASES if what not in table]
    assert not missing, f"docs/robustness.md lacks: {missing} (regenerate with `python -m tests.bad_inputs`)"
    assert len(CASES) >= 20


def test_full_disk_during_checkpoint_write_keeps_the_old_file(workspace, tmp_path, monkeypatch):
    """ENOSPC in the middle of a checkpoint write: one clear error, the previous file intact, no temp left."""
    import mindspore as ms
    from ms_semiseg.errors import UserError
    from ms_semiseg.utils.checkpoint import read_checkpoint, save_params_atomic
    target = tmp_path / "best.ckpt"
    save_params_atomic({"w": ms.Tensor([1.0, 2.0])}, str(target))
    good = target.read_bytes()

    def full_disk(entries, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous file, if any, is unchanged"):
        save_params_atomic({"w": ms.Tensor([3.0, 4.0])}, str(target))
    assert target.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt"]
    monkeypatch.undo()
    assert read_checkpoint(str(target))["w"].asnumpy().tolist() == [1.0, 2.0]
