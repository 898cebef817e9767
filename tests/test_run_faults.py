"""Faults met while `train` runs (issue 19), through the real command line (`tests/run_faults.py` runs them all
together in one fixture): a corrupt image met by the loader workers mid-run ends with the reader's one line and
exit 2, keeps last.ckpt, and `--resume` continues once the file is fixed; `dataset.on_bad_image: skip` trains on
and lists the file; a second run on a busy work folder stops at once naming the folder and the pid; a stale lock
does not block `--resume`; SIGTERM / SIGINT stop after a step with exit 143 / 130, a complete last.ckpt and the
exact command that resumes. Plus the lock, the pipeline's error recovery and the skip record in-process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ms_semiseg.errors import MarkedUserError, UserError, user_error_in
from ms_semiseg.utils.lock import LOCK_NAME, FolderLock
from tests.helpers import REPO_ROOT
from tests.run_faults import BAD_LABELED, BAD_UNLABELED, TABLE, run_scenarios


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return run_scenarios(tmp_path_factory.mktemp("run_faults"))


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _assert_checkpoint_readable(work):
    from ms_semiseg.engine.state import read_meta
    checkpoints = os.path.join(work, "checkpoints")
    assert read_meta(os.path.join(checkpoints, "last.ckpt"))["seed"] == 2
    assert not [name for name in os.listdir(checkpoints) if ".tmp-" in name], os.listdir(checkpoints)


@pytest.mark.parametrize("side, sample", [("labeled", BAD_LABELED), ("unlabeled", BAD_UNLABELED)])
def test_corrupt_image_met_by_loader_workers_is_one_line_and_resume_continues(faults, side, sample):
    result = faults[side]
    code, _, stderr = result["first"]
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Dataset Pipeline" not in stderr and "C++" not in stderr, stderr[-3000:]
    line = _lines(stderr)[-1]
    assert line == f"error: {result['bad_file']}: empty file, expected an image", line
    assert sample in line
    _assert_checkpoint_readable(result["work"])  # the last good checkpoint stays
    assert not os.path.exists(os.path.join(result["work"], LOCK_NAME)), "the lock was not released"
    code, stdout, stderr = result["resume"]
    assert code == 0, stderr[-3000:]
    assert "resumed from" in stderr and "training finished" in stdout


def test_stale_lock_of_a_killed_run_does_not_block_resume(faults):
    result = faults["unlabeled"]
    code, _, stderr = result["resume"]
    assert code == 0 and "in use" not in stderr, stderr[-3000:]
    assert not os.path.exists(os.path.join(result["work"], LOCK_NAME))


def test_on_bad_image_skip_trains_on_and_lists_the_file(faults):
    code, stdout, stderr = faults["skip"]["first"]
    assert code == 0, stderr[-3000:]
    assert "skipped:     1 unreadable training file(s) (dataset.on_bad_image: skip)" in stdout, stdout
    assert f"JPEGImages/{BAD_LABELED}.jpg: empty file, expected an image" in _lines(stdout)[-1]


def test_second_run_on_a_busy_work_folder_stops_at_once(faults):
    result = faults["busy"]
    code, stdout, stderr = result["second"]
    assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = _lines(stderr)
    assert line.startswith(f"error: {result['work']}: work folder in use by another run (pid {result['pid']} on "
                           f"host {socket.gethostname()}"), line
    assert "training" not in stdout


@pytest.mark.parametrize("scenario, signal_name, exit_code", [("busy", "SIGTERM", 143), ("sigint", "SIGINT", 130)])
def test_signal_stops_after_a_step_saves_and_prints_the_resume_command(faults, scenario, signal_name, exit_code):
    result = faults[scenario]
    code, _, stderr = result["first"]
    assert code == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr
    line = _lines(stderr)[-1]
    assert line.startswith(f"interrupted: {signal_name} at epoch "), line
    assert "holds the last complete state" in line and line.endswith("--resume --opts trainer.sup_only_epoch=3 "
                                                                      "trainer.epochs=3"), line
    assert f"--work-dir {result['work']}" in line
    _assert_checkpoint_readable(result["work"])
    assert not os.path.exists(os.path.join(result["work"], LOCK_NAME))
    code, stdout, stderr = result["resume"]  # the printed command, as printed
    assert code == 0, stderr[-3000:]
    assert "resumed from" in stderr and "training finished" in stdout


def test_docs_list_the_mid_run_faults():
    table = open(os.path.join(REPO_ROOT, "docs", "robustness.md"), encoding="utf-8").read()
    missing = [what for _, what, _, _ in TABLE if what not in table]
    assert not missing, f"docs/robustness.md lacks: {missing} (regenerate with `python -m tests.bad_inputs`)"


# ------------------------------------------------------------------------------------------------ in-process


def _write_lock(folder, **owner):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w", encoding="utf-8") as handle:
        json.dump(owner, handle)


def _gone_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_is_exclusive_stale_locks_are_taken_over_and_release_removes_it(tmp_path):
    folder = tmp_path / "work"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(folder, pid=sleeper.pid, host=socket.gethostname(), started=0)
        with pytest.raises(UserError, match=rf"in use by another run \(pid {sleeper.pid} on host"):
            FolderLock(folder).acquire()
        with pytest.raises(UserError, match="in use"):
            FolderLock(folder).check()
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(folder, pid=_gone_pid(), host=socket.gethostname(), started=0)
    FolderLock(folder).check()  # stale: no error
    with FolderLock(folder) as lock:
        owner = json.load(open(folder / LOCK_NAME, encoding="utf-8"))
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(UserError, match=str(os.getpid())):
            FolderLock(folder).acquire()  # one owner, even within a process
        assert lock.held
    assert not (folder / LOCK_NAME).exists()


def test_lock_of_another_host_counts_as_held_and_names_the_file(tmp_path):
    _write_lock(tmp_path, pid=1, host="some-other-host", started=0)
    with pytest.raises(UserError, match=f"on host some-other-host.*delete {tmp_path / LOCK_NAME}"):
        FolderLock(tmp_path).acquire()


def test_user_error_survives_mindspore_wrapping_its_text():
    marked = MarkedUserError(UserError("/data/a b.jpg: empty file, expected an image"))
    wrapped = RuntimeError(f"Exception thrown from user defined Python function in dataset.\nTraceback ...\n"
                           f"ms_semiseg.errors.MarkedUserError: {marked}\n- C++ Call Stack: ...")
    error = user_error_in(wrapped)
    assert str(error) == "/data/a b.jpg: empty file, expected an image" and error.exit_code == 2
    assert user_error_in(RuntimeError("some other failure")) is None


class _Reader:
    list_path = "unlabeled.txt"

    def __len__(self):
        return 6

    def __getitem__(self, index):
        if index == 3:
            raise UserError(f"/data/img_{index}.jpg: empty file, expected an image")
        return np.full((8, 8, 3), index, np.uint8), None, str(index)


def _unlabeled_side_pipeline(skipped):
    import mindspore.dataset as ds
    from ms_semiseg.engine import pipeline
    labeled = _Reader()
    labeled.__class__ = type("_Labeled", (_Reader,), {"__getitem__": lambda self, i: (
        np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), str(i))})
    source = pipeline._EpochSource(labeled, _Reader(), lambda image, label, rng: (
        image.astype(np.float32), np.zeros((8, 8), np.uint8) if label is None else label), 0, 0,
        {0: np.arange(6), 1: np.arange(6)}, 0, 6, False, skipped)
    dataset = ds.GeneratorDataset(source, column_names=["image_l", "label_l", "image_u"], shuffle=False,
                                  num_parallel_workers=2, python_multiprocessing=pipeline.PYTHON_MULTIPROCESSING)
    return pipeline.TrainPipeline(dataset.batch(2, drop_remainder=True), ["image_l", "label_l", "image_u"], 3, 2,
                                  source)


def test_pipeline_workers_raise_the_readers_user_error_or_skip_the_sample():
    from ms_semiseg.engine.pipeline import SkippedSamples
    with pytest.raises(UserError, match=r"^/data/img_3.jpg: empty file, expected an image$"):
        list(_unlabeled_side_pipeline(None))
    skipped = SkippedSamples()
    batches = list(_unlabeled_side_pipeline(skipped))
    assert len(batches) == 3 and len(skipped) == 1
    seen = sorted({int(v) for batch in batches for v in batch["image_u"][:, 0, 0, 0]})
    assert seen == [0, 1, 2, 4, 5]  # the bad sample replaced by the next readable one
    assert "/data/img_3.jpg: empty file" in skipped.summary()[-1]


def test_on_bad_image_is_validated():
    from ms_semiseg.engine.train_data import on_bad_image
    assert on_bad_image({"dataset": {}}) == "error"
    with pytest.raises(UserError, match="dataset.on_bad_image: 'ignore' is not supported, expected error"):
        on_bad_image({"dataset": {"on_bad_image": "ignore"}})
