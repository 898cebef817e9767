"""`python -m ms_semiseg train` end to end on a tiny VOC-layout dataset (ResNet-18, crop 33, 4x4 patch grid):
warm-up, prototype initialisation, semi-supervised epochs, records, best.ckpt, user errors, and faults: SIGKILL at
random points of a run (inside steps, checkpoint writes, validation), each followed by `--resume`; the run finishes,
best.ckpt is loadable after every kill, and the final weights and loss curve equal an uninterrupted run's; two
uninterrupted runs with the same seed log the same loss curve (CPU determinism).

The fault comparisons are bit for bit, and rightly: they are same-machine determinism claims, the killed-and-resumed
run and the uninterrupted one (or two runs of one seed) being the same computation, on the same machine, started at
the same time with the same environment (oneDNN ISA included). Any difference is a real bug (state that a checkpoint
misses or restores in another order, an unseeded draw) which a tolerance would hide. They say nothing about another
CPU, which gives other bits, equally on both sides. (The kill-and-resume tests were tests/test_faults.py, whose
uninterrupted reference was a second copy of this module's run; one set of runs now serves both.)"""
import csv
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from fixtures import make_voc_fixture
from helpers import REPO_ROOT, assert_user_error, run_module, tiny_config, write_config

IDS = [f"2007_{i:06d}" for i in range(10)]
EPOCHS, ITERATIONS = 3, 3  # 6 unlabeled images, batch 2


KILLS = 3
EVERY_STEP = ("--opts", "trainer.save_interval=1")  # a checkpoint write after every iteration: kills land in some


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny PCR config and its runs, started together to share the compile time: 'A' and 'A2' uninterrupted with
    the same seed, 'nan' (a learning rate that overflows), and 'killed', SIGKILLed at KILLS seeded random steps and
    resumed after each kill (while the others run)."""
    root = tmp_path_factory.mktemp("train")
    config, cfg = make_tiny_config(root)
    runs = {name: start_training(config, root, name, *EVERY_STEP) for name in ("A", "A2")}
    # supervised only (sup_only_epoch >= epochs), checkpoint after every iteration, weights overflow
    runs["nan"] = start_training(config, root, "nan", "--opts", "trainer.optimizer.kwargs.lr=1.0e+30",
                                 "trainer.epochs=1", "trainer.save_interval=1")
    kills = kill_and_resume(config, cfg, root, "killed")
    for process in runs.values():
        process.wait(timeout=900)
    outputs = {name: (runs[name].returncode, (root / f"{name}.out").read_text(), (root / f"{name}.err").read_text())
               for name in runs}
    return {"config": config, "root": root, "work": root / "A", "cfg": cfg, "runs": outputs, "kills": kills}


def kill_and_resume(config, cfg, root, name):
    """Starts run `name`, SIGKILLs it KILLS times at seeded random steps (plus a random delay, so that a kill lands
    anywhere: in a step, a checkpoint write, validation), checks best.ckpt loads after each kill and resumes; returns
    each kill's return code and last logged step, and the final run's return code."""
    rng = np.random.default_rng(0)
    targets = sorted(rng.choice(np.arange(1, EPOCHS * ITERATIONS - 1), size=KILLS, replace=False))
    work = root / name
    process = start_training(config, root, name, *EVERY_STEP)
    codes, steps = [], []
    for target in targets:
        codes.append(wait_and_kill(process, work, int(target), float(rng.uniform(0.0, 1.5))))
        steps.append(last_step_logged(work))
        assert_best_loadable(cfg, work)
        resume = ("--resume",) if (work / "checkpoints" / "last.ckpt").exists() else ()
        process = start_training(config, root, name, *EVERY_STEP, *resume)
    process.wait(timeout=900)
    return {"codes": codes, "steps": steps, "final": process.returncode}


def wait_and_kill(process, work, step, extra_delay):
    deadline = time.time() + 900
    while process.poll() is None and time.time() < deadline and last_step_logged(work) < step:
        time.sleep(0.05)
    time.sleep(extra_delay)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return process.returncode


def assert_best_loadable(cfg, work):
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model
    best = work / "checkpoints" / "best.ckpt"
    if best.exists():
        load_into_model(create_model(cfg["net"]), str(best))


def make_tiny_config(root):
    """The tiny PCR config of these tests (also used by tests/test_global_batch.py): returns (path, dict)."""
    sizes = {sample: (36 + 3 * (k % 3), 44 - 2 * (k % 4)) for k, sample in enumerate(IDS)}
    data = make_voc_fixture(str(root / "voc"), sizes, lists={"labeled": IDS[:4], "unlabeled": IDS[4:], "val": IDS[:3]})
    cfg = tiny_config()
    dataset = cfg["dataset"]
    dataset["train"].update(data_root=data["root"], data_list=data["lists"]["labeled"], crop={"type": "rand",
                                                                                              "size": [33, 33]})
    dataset["val"].update(data_root=data["root"], data_list=data["lists"]["val"], crop={"type": "center",
                                                                                        "size": [33, 33]})
    dataset["workers"] = 1
    cfg["trainer"].update(epochs=EPOCHS, sup_only_epoch=1, log_interval=1, save_interval=2)
    cfg["trainer"]["optimizer"]["kwargs"]["lr"] = 0.01
    cfg["net"]["proto_head"]["select_granularity"] = 4
    cfg["saver"]["main_dir"] = str(root / "default_work_dir")
    config = write_config(cfg, str(root))
    return config, cfg


def start_training(config, root, name, *args):
    """`train` into work dir root/name in the background; stdout/stderr go to root/name.out/.err."""
    command = [sys.executable, "-m", "ms_semiseg", "train", "--config", config, "--device", "CPU",
               "--work-dir", str(root / name), *args]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    with open(root / f"{name}.out", "w") as out, open(root / f"{name}.err", "w") as err:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)


def train(config, *args):
    return run_module("ms_semiseg", "train", "--config", config, "--device", "CPU", *args)


def read_log(work):
    with open(os.path.join(work, "log.csv"), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def last_step_logged(work):
    """Largest step in log.csv (-1 when none); tolerates a row being written while it is read."""
    path = os.path.join(work, "log.csv")
    if not os.path.isfile(path):
        return -1
    with open(path, newline="", encoding="utf-8") as handle:
        return max([int(r["step"]) for r in csv.DictReader(handle) if (r.get("step") or "").isdigit()] + [-1])


def load_params(path):
    return {name: value for name, value in ms.load_checkpoint(str(path)).items() if not isinstance(value, str)}


def test_trains_end_to_end_through_warmup_prototypes_and_semi_steps(tiny_run):
    (returncode, stdout, stderr), work = tiny_run["runs"]["A"], tiny_run["work"]
    assert returncode == 0, stderr[-3000:]
    rows = read_log(work)
    assert [int(r["step"]) for r in rows] == list(range(EPOCHS * ITERATIONS))
    assert [r["phase"] for r in rows] == ["supervised"] * ITERATIONS + ["semi"] * (EPOCHS - 1) * ITERATIONS
    semi = [r for r in rows if r["phase"] == "semi"]
    assert all(float(r["proto"]) > 0 and float(r["unsup"]) >= 0 for r in semi)
    assert all(float(r["proto"]) == 0 and float(r["unsup"]) == 0 for r in rows[:ITERATIONS])
    sup = [float(r["sup"]) for r in rows]
    assert sup[ITERATIONS - 1] < 0.8 * sup[0]  # warm-up on the labeled batches
    assert np.mean(sup[-ITERATIONS:]) < sup[0]  # still below the start after the semi epochs
    np.testing.assert_allclose([float(r["lr"]) for r in rows[:2]], [0.01, 0.01 * (1 - 1 / 9) ** 0.9], rtol=1e-5)
    assert "k-means" in stderr and "teacher initialised from the student" in stderr
    assert "validation mIoU (teacher" in stderr and "best.ckpt" in stdout
    for name in ("curves.png", "prototypes_init.pickle", "config.yaml"):
        assert os.path.getsize(work / name) > 0, name
    with open(work / "curves.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_recompilation_after_the_first_step_of_each_graph(tiny_run):
    rows, stderr = read_log(tiny_run["work"]), tiny_run["runs"]["A"][2]
    by_epoch = {}
    for row in rows:
        by_epoch.setdefault(row["epoch"], set()).add(int(row["graphs"]))
    # supervised step; + student eval, teacher pseudo-labels, semi step; + teacher eval after epoch 2
    assert by_epoch == {"1": {1}, "2": {4}, "3": {5}}
    assert "RECOMPILED" not in stderr and stderr.count("compiled the semi step graph") == 1


def test_best_checkpoint_is_the_teacher_in_the_eval_layout(tiny_run):
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model
    best = tiny_run["work"] / "checkpoints" / "best.ckpt"
    model = load_into_model(create_model(tiny_run["cfg"]["net"]), str(best))
    assert "proto_net.proto_list" in {p.name for p in model.get_parameters()}
    last = load_params(tiny_run["work"] / "checkpoints" / "last.ckpt")
    saved = load_params(best)
    source = "teacher." if any(k.startswith("teacher.") for k in last) else "student."
    for name, value in saved.items():  # best is from a semi epoch (or the student if the warm-up was best)
        assert source + name in last
    assert not any("keep_mask" in name for name in saved)


def test_repeated_sigkill_and_resume_end_with_the_uninterrupted_weights_and_losses(tiny_run):
    """Bit-identical weights and logged losses: same-machine determinism (see the module docstring)."""
    root, kills = tiny_run["root"], tiny_run["kills"]
    assert tiny_run["runs"]["A"][0] == 0
    assert kills["final"] == 0, (root / "killed.err").read_text()[-3000:]
    # at least one kill inside the semi-supervised epochs (steps >= ITERATIONS), whose state (teacher, prototypes,
    # their momentum) a resume must restore besides the student's
    assert any(code == -signal.SIGKILL and step >= ITERATIONS for code, step in zip(kills["codes"], kills["steps"])), \
        kills
    expected = load_params(tiny_run["work"] / "checkpoints" / "last.ckpt")
    actual = load_params(root / "killed" / "checkpoints" / "last.ckpt")
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name].asnumpy(), value.asnumpy(), err_msg=name)
    assert "resumed from" in (root / "killed.err").read_text()
    assert logged_losses(root / "killed") == logged_losses(tiny_run["work"])
    assert_best_loadable(tiny_run["cfg"], root / "killed")
    assert not list((root / "killed" / "checkpoints").glob(".*.tmp-*")), "a temp file survived the resume"


def test_same_seed_gives_the_same_loss_curve_twice(tiny_run):
    """The logged strings equal: the same run twice on one machine (same-machine determinism, see the module
    docstring), so the printed figures repeat exactly; on another CPU both runs print other, equal figures."""
    assert tiny_run["runs"]["A2"][0] == 0, tiny_run["runs"]["A2"][2][-3000:]
    first = logged_losses(tiny_run["work"])
    assert len(first) == EPOCHS * ITERATIONS
    assert first == logged_losses(tiny_run["root"] / "A2")


def logged_losses(work):
    return [[row[c] for c in ("step", "loss", "sup", "unsup", "proto")] for row in read_log(work)]


def test_an_existing_run_needs_resume_and_unknown_opts_exit_2(tiny_run):
    result = train(tiny_run["config"], "--work-dir", tiny_run["work"])
    assert_user_error(result, "last.ckpt", "--resume")
    result = train(tiny_run["config"], "--opts", "trainer.epochz=1")
    assert_user_error(result, "trainer.epochz", "no such config key")
    result = train(tiny_run["config"], "--opts", "trainer.unsupervised.loss_type=fixmatch")
    assert_user_error(result, "trainer.unsupervised.loss_type", "confidence")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_run):
    returncode, _, stderr = tiny_run["runs"]["nan"]
    assert returncode == 3, stderr[-3000:]
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: loss is not finite at epoch 1, iteration 2 (global step 1)"), message
    assert "last.ckpt (1 iterations done)" in message
    kept = load_params(tiny_run["root"] / "nan" / "checkpoints" / "last.ckpt")
    assert all(np.all(np.isfinite(v.asnumpy())) for v in kept.values() if v.dtype == ms.float32)
