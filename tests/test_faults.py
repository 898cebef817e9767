"""Faults: SIGKILL at random points of a training run (inside steps, checkpoint writes, validation), each followed
by `--resume`; the run finishes, best.ckpt is loadable after every kill, and the final weights equal an uninterrupted
run's. Also: two uninterrupted runs with the same seed log the same loss curve (CPU determinism).

Both comparisons are bit for bit, and rightly: they are same-machine determinism claims, the killed-and-resumed run
and the uninterrupted one (or two runs of one seed) being the same computation, on the same machine, started at the
same time with the same environment (oneDNN ISA included). Any difference is a real bug (state that a checkpoint
misses or restores in another order, an unseeded draw) which a tolerance would hide. They say nothing about another
CPU, which gives other bits, equally on both sides."""
import signal
import time

import numpy as np
import pytest

from test_train import (EPOCHS, ITERATIONS, last_step_logged, load_params, make_tiny_config, read_log,
                        start_training)

KILLS = 3


def _wait_and_kill(process, work, step, extra_delay):
    deadline = time.time() + 900
    while process.poll() is None and time.time() < deadline and last_step_logged(work) < step:
        time.sleep(0.05)
    time.sleep(extra_delay)  # lands anywhere: in a step, in a checkpoint write (save_interval=1), in validation
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return process.returncode


def _assert_best_loadable(cfg, work):
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model
    best = work / "checkpoints" / "best.ckpt"
    if best.exists():
        load_into_model(create_model(cfg["net"]), str(best))


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    config, cfg = make_tiny_config(root)
    opts = ("--opts", "trainer.save_interval=1")
    reference = [start_training(config, root, name, *opts) for name in ("ref", "ref2")]
    rng = np.random.default_rng(0)
    targets = sorted(rng.choice(np.arange(1, EPOCHS * ITERATIONS - 1), size=KILLS, replace=False))
    work = root / "killed"
    process = start_training(config, root, "killed", *opts)
    codes = []
    for target in targets:
        codes.append(_wait_and_kill(process, work, int(target), float(rng.uniform(0.0, 1.5))))
        _assert_best_loadable(cfg, work)
        resume = ("--resume",) if (work / "checkpoints" / "last.ckpt").exists() else ()
        process = start_training(config, root, "killed", *opts, *resume)
    process.wait(timeout=900)
    for ref in reference:
        ref.wait(timeout=900)
    return {"root": root, "cfg": cfg, "codes": codes, "final": process.returncode,
            "refs": [r.returncode for r in reference]}


def test_repeated_sigkill_and_resume_end_with_the_uninterrupted_weights(fault_runs):
    """Bit-identical: same-machine determinism (see the module docstring)."""
    root = fault_runs["root"]
    assert fault_runs["refs"] == [0, 0]
    assert fault_runs["final"] == 0, (root / "killed.err").read_text()[-3000:]
    assert any(code == -signal.SIGKILL for code in fault_runs["codes"]), fault_runs["codes"]
    expected = load_params(root / "ref" / "checkpoints" / "last.ckpt")
    actual = load_params(root / "killed" / "checkpoints" / "last.ckpt")
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name].asnumpy(), value.asnumpy(), err_msg=name)
    _assert_best_loadable(fault_runs["cfg"], root / "killed")
    assert not list((root / "killed" / "checkpoints").glob(".*.tmp-*")), "a temp file survived the resume"


def test_same_seed_gives_the_same_loss_curve_twice(fault_runs):
    """The logged strings equal: the same run twice on one machine (same-machine determinism, see the module
    docstring), so the printed figures repeat exactly; on another CPU both runs print other, equal figures."""
    columns = ("step", "loss", "sup", "unsup", "proto")
    first, second = (read_log(fault_runs["root"] / name) for name in ("ref", "ref2"))
    assert len(first) == EPOCHS * ITERATIONS
    assert [[r[c] for c in columns] for r in first] == [[r[c] for c in columns] for r in second]
