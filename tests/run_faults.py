"""Faults met in the middle of a `train` run, through the real command line: a corrupt (zero-byte) image met by
the loader workers mid-run (labeled and unlabeled side, `dataset.workers: 2`), `dataset.on_bad_image: skip`, a
second run on a work folder in use, a stale lock left by a killed run, SIGTERM / SIGINT and the printed resume
command. Shared by `tests/test_run_faults.py` and by `python -m tests.bad_inputs`, which appends these rows to the
robustness table in docs/robustness.md.

`run_scenarios(root)` starts every run together (they share the 2 cores and the compile time), does what each
scenario needs while they run (empty a file once the first checkpoint exists, start a second run on a busy folder,
send a signal), then the follow-ups (fix the file and `--resume`, run the printed resume command) and returns
{scenario: {"first": (code, stdout, stderr), "second": ..., ...}}.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from tests.fixtures import make_voc_fixture
from tests.helpers import REPO_ROOT, point_at_data, tiny_config, write_config

IDS = [f"2007_{i:06d}" for i in range(10)]
LABELED, UNLABELED = IDS[:4], IDS[4:]
BAD_LABELED, BAD_UNLABELED = LABELED[3], UNLABELED[2]  # not in the val list (IDS[:3])
SUPERVISED = ("--opts", "trainer.sup_only_epoch=2")  # 2 epochs x 2 iterations, labeled images only


def make_config(root, **dataset_keys):
    """The tiny PCR config (ResNet-18, crop 33, batch 2, 2 loader workers, a checkpoint after every iteration)
    over its own copy of the VOC fixture under root/<name>; returns (config path, VOC folder)."""
    sizes = {sample: (36 + 3 * (k % 3), 44 - 2 * (k % 4)) for k, sample in enumerate(IDS)}
    data = make_voc_fixture(os.path.join(root, "voc"), sizes, lists={"labeled": LABELED, "unlabeled": UNLABELED,
                                                                      "val": IDS[:3]})
    cfg = tiny_config()
    dataset = point_at_data(cfg, data["root"], data["lists"]["labeled"], data["lists"]["val"])
    dataset.update(workers=2, **dataset_keys)
    cfg["trainer"].update(epochs=2, sup_only_epoch=1, log_interval=1, save_interval=1)
    cfg["trainer"]["optimizer"]["kwargs"]["lr"] = 0.01
    cfg["net"]["proto_head"]["select_granularity"] = 4
    return write_config(cfg, root), data["root"]


def image(voc, sample):
    return os.path.join(voc, "JPEGImages", sample + ".jpg")


def train_argv(config, work, *args):
    return [sys.executable, "-m", "ms_semiseg", "train", "--config", config, "--device", "CPU", "--work-dir", work,
            *args]


def _env():
    return dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")


class Run:
    """A background command with its output in files."""

    def __init__(self, argv, log_prefix):
        self.out, self.err = log_prefix + ".out", log_prefix + ".err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            # its own session: a signal meant for one run (or one a library sends to its group) reaches no other
            self.process = subprocess.Popen(argv, cwd=REPO_ROOT, env=_env(), stdout=out, stderr=err,
                                            start_new_session=True)

    def result(self, timeout=1200):
        self.process.wait(timeout=timeout)
        return (self.process.returncode, open(self.out, encoding="utf-8").read(),
                open(self.err, encoding="utf-8").read())


def last_step(work):
    path = os.path.join(work, "log.csv")
    if not os.path.isfile(path):
        return -1
    with open(path, encoding="utf-8") as handle:
        steps = [line.split(",")[2] for line in handle.read().splitlines()[1:] if line.count(",") > 3]
    return max([int(s) for s in steps if s.isdigit()] + [-1])


def last_ckpt(work):
    return os.path.join(work, "checkpoints", "last.ckpt")


def resume_command_in(stderr):
    """The command an `interrupted:` line says to run, as argv (its `python` is this interpreter)."""
    line = [ln for ln in stderr.splitlines() if ln.startswith("interrupted: ")][-1]
    argv = shlex.split(line.split("resume with: ", 1)[1])
    assert argv[0] == "python", line
    return [sys.executable, *argv[1:]]


def leave_stale_lock(work):
    """What a killed run leaves: a lock written by a process that is gone."""
    code = f"from ms_semiseg.utils.lock import FolderLock; FolderLock({work!r}).acquire()"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), check=True)
    with open(os.path.join(work, ".ms_semiseg.lock"), encoding="utf-8") as handle:
        return json.load(handle)["pid"]


def run_scenarios(root):
    root = str(root)
    folders = {name: os.path.join(root, name) for name in ("labeled", "unlabeled", "skip", "busy", "sigint")}
    configs = {}
    for name, folder in folders.items():
        os.makedirs(folder)
        keys = {"on_bad_image": "skip"} if name == "skip" else {}
        configs[name] = make_config(folder, **keys)
    # the skip run meets an empty labeled image from the first batch on (only existence is checked up front)
    open(image(configs["skip"][1], BAD_LABELED), "wb").close()
    work = {name: os.path.join(folder, "run") for name, folder in folders.items()}
    runs = {
        "labeled": Run(train_argv(configs["labeled"][0], work["labeled"], *SUPERVISED), work["labeled"]),
        "unlabeled": Run(train_argv(configs["unlabeled"][0], work["unlabeled"]), work["unlabeled"]),
        "skip": Run(train_argv(configs["skip"][0], work["skip"], *SUPERVISED), work["skip"]),
        "busy": Run(train_argv(configs["busy"][0], work["busy"], "--opts", "trainer.sup_only_epoch=3",
                               "trainer.epochs=3"), work["busy"]),
        "sigint": Run(train_argv(configs["sigint"][0], work["sigint"], "--opts", "trainer.sup_only_epoch=3",
                                 "trainer.epochs=3"), work["sigint"]),
    }
    results = {name: {} for name in runs}
    saved, second = {}, None
    busy_argv = train_argv(configs["busy"][0], work["busy"], "--opts", "trainer.sup_only_epoch=3", "trainer.epochs=3")
    deadline = time.time() + 1200
    while time.time() < deadline and any(run.process.poll() is None for run in runs.values()):
        # a file goes bad once its run has a checkpoint: the next epoch's loader workers meet it
        for name, sample in (("labeled", BAD_LABELED), ("unlabeled", BAD_UNLABELED)):
            if name not in saved and os.path.isfile(last_ckpt(work[name])):
                path = image(configs[name][1], sample)
                saved[name] = (path, open(path, "rb").read())
                open(path, "wb").close()
        # a second run on the folder in use once a step is logged, then SIGTERM; SIGINT to the other
        if second is None and last_step(work["busy"]) >= 1:
            second = Run(busy_argv, work["busy"] + "_second")
        if second is not None and "second" not in results["busy"] and second.process.poll() is not None:
            results["busy"]["second"] = second.result()
            results["busy"]["pid"] = runs["busy"].process.pid
            runs["busy"].process.send_signal(signal.SIGTERM)
        if "sent" not in results["sigint"] and last_step(work["sigint"]) >= 1:
            results["sigint"]["sent"] = True
            runs["sigint"].process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    if second is not None and "second" not in results["busy"]:
        results["busy"]["second"] = second.result()
    for name, run in runs.items():
        results[name]["first"] = run.result()
        results[name]["work"] = work[name]
        results[name]["ckpt_after_first"] = os.path.isfile(last_ckpt(work[name]))
    # follow-ups: fix the file and resume (the unlabeled one over a stale lock); run the printed commands
    followups = {}
    for name in saved:
        path, data = saved[name]
        with open(path, "wb") as handle:
            handle.write(data)
        results[name]["bad_file"] = path
    results["unlabeled"]["stale_pid"] = leave_stale_lock(work["unlabeled"])
    followups["labeled"] = Run(train_argv(configs["labeled"][0], work["labeled"], *SUPERVISED, "--resume"),
                               work["labeled"] + "_resume")
    followups["unlabeled"] = Run(train_argv(configs["unlabeled"][0], work["unlabeled"], "--resume"),
                                 work["unlabeled"] + "_resume")
    for name in ("busy", "sigint"):
        if results[name]["first"][0] in (130, 143):
            argv = resume_command_in(results[name]["first"][2])
            results[name]["resume_argv"] = argv
            followups[name] = Run(argv, work[name] + "_resume")
    for name, run in followups.items():
        results[name]["resume"] = run.result()
    return results


# (id, what happened, scenario, which result) for the table in docs/robustness.md
TABLE = [
    ("midrun_labeled_empty", "zero-byte JPEG on the labeled side, met by 2 loader workers mid-run", "labeled",
     "first"),
    ("midrun_unlabeled_empty", "zero-byte JPEG on the unlabeled side, met by 2 loader workers mid-run",
     "unlabeled", "first"),
    ("midrun_skip", "zero-byte labeled JPEG with `dataset.on_bad_image: skip` (last line of the summary)", "skip",
     "first"),
    ("busy_work_dir", "a second `train` on a work folder in use", "busy", "second"),
    ("sigterm", "SIGTERM during training", "busy", "first"),
    ("sigint", "SIGINT (Ctrl-C) during training", "sigint", "first"),
    ("stale_lock", "`--resume` over the lock left by a killed run (last line of the summary)", "unlabeled",
     "resume"),
]


def table_rows(root, first_number):
    """Table rows (same columns as tests.bad_inputs): one per TABLE entry."""
    results = run_scenarios(root)
    rows = []
    for number, (_, what, scenario, key) in enumerate(TABLE, first_number):
        code, stdout, stderr = results[scenario][key]
        text = stdout if code == 0 else stderr
        line = (text.strip().splitlines() or ["(nothing)"])[-1].strip().replace(str(root), "…").replace("|", "\\|")
        rows.append(f"| {number} | {what} | `ms_semiseg train` | `{line}` (exit {code}) |")
    return rows
