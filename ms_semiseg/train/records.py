"""What a run writes besides checkpoints: the work folder's layout (`RunFiles`), log.csv (`StepLog`), curves.png,
and the config as run (progress messages: `engine/console.py`)."""
import csv
import io
import os
import time
from dataclasses import dataclass

import numpy as np
import yaml

from ..config import get
from ..errors import UserError
from ..utils.atomic import write_bytes_atomic, write_text_atomic
from ..engine.distributed import main_process_only
from ..engine.state import read_meta

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_COLUMNS = ("epoch", "iteration", "step", "phase", "loss", "sup", "unsup", "proto", "lr", "lr_decoder",
               "images_per_s", "graphs", "time_s")


class TrainingDiverged(UserError):
    """A NaN/inf loss: the run stops, the last checkpoint (written before the bad step) is kept."""
    exit_code = 3


@dataclass(frozen=True)
class RunFiles:
    work_dir: str
    checkpoint_dir: str
    config_path: str = "CONFIG"  # the config file, for the summary's eval command

    @classmethod
    def from_config(cls, cfg, work_dir=None):
        if work_dir is None:
            main_dir = get(cfg, "saver.main_dir")
            if not main_dir:
                raise UserError("saver.main_dir: missing, expected the output folder (or pass --work-dir)")
            # upstream layout: ckpt/<dataset>/<split>/<method>, relative to the repo root (where eval.sh looks)
            work_dir = main_dir if os.path.isabs(main_dir) else os.path.join(REPO_ROOT, main_dir)
        work_dir = os.path.abspath(os.path.expanduser(work_dir))
        return cls(work_dir, os.path.join(work_dir, str(get(cfg, "saver.snapshot_dir", "checkpoints"))),
                   cfg.get("_config_path", "CONFIG"))

    def path(self, name):
        return os.path.join(self.work_dir, name)

    @property
    def last(self):
        return os.path.join(self.checkpoint_dir, "last.ckpt")

    @property
    def best(self):
        return os.path.join(self.checkpoint_dir, "best.ckpt")

    def summary(self, best_miou, best_epoch):
        """The lines of the end-of-run summary: the best result and where each file is."""
        best_text = (f"{100 * best_miou:.2f} mIoU (center crop) at epoch {best_epoch}" if best_miou is not None
                     else "no validation (trainer.eval_on false or no dataset.val); the final model")
        return ["", "training finished",
                f"  best:        {best_text}",
                f"  best.ckpt:   {self.best}",
                f"  evaluate:    python -m ms_semiseg eval --config {self.config_path} "
                f"--ckpt {self.best}",
                f"  last.ckpt:   {self.last}   (full state; --resume continues from it)",
                f"  log.csv:     {self.path('log.csv')}",
                f"  curves.png:  {self.path('curves.png')}"]


class StepLog:
    """Loss tensors of the last steps, fetched to the host every `interval` steps (no per-step round trip),
    checked for NaN/inf, appended to log.csv and shown on the progress bar."""

    def __init__(self, path, interval, resume_step):
        self.path, self.interval = path, interval
        self.pending, self.rows = [], _read_log(path, resume_step)
        self.window_start = time.perf_counter()
        self._rewrite()

    @main_process_only
    def _rewrite(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buffer.getvalue())

    def add(self, info, losses):
        self.pending.append((info, losses))
        return len(self.pending) >= self.interval

    def flush(self, on_bad_loss, images_per_step):
        """Fetches pending losses; returns the newest row (None when nothing was pending)."""
        if not self.pending:
            return None
        values = np.stack([losses.asnumpy() for _, losses in self.pending])
        elapsed = time.perf_counter() - self.window_start
        speed = images_per_step * len(self.pending) / max(elapsed, 1e-9)
        finite = np.all(np.isfinite(values), axis=1)
        good = len(values) if finite.all() else int(np.argmin(finite))
        new_rows = [{**info, "loss": float(value[0]), "sup": float(value[1]), "unsup": float(value[2]),
                     "proto": float(value[3]), "images_per_s": round(speed, 3)}
                    for (info, _), value in zip(self.pending[:good], values[:good])]
        self._append(new_rows)
        self.rows.extend(new_rows)
        if good < len(values):  # the rows before the bad step are recorded first
            on_bad_loss(self.pending[good][0], values[good])
        self.pending = []
        self.window_start = time.perf_counter()
        return new_rows[-1]

    @main_process_only
    def _append(self, rows):
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, LOG_COLUMNS).writerows(rows)


def _read_log(path, before_step):
    """Rows of an existing log.csv for steps < before_step (a resumed run rewrites the rest)."""
    if before_step == 0 or not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("step", "").isdigit()
                and int(row["step"]) < before_step]


@main_process_only
def plot_curves(path, rows, history):
    """PNG with the loss components per step and the validation mIoU per epoch."""
    import matplotlib  # imported here: ~0.4 s that every `python -m ms_semiseg` command would pay at start-up
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [int(row["step"]) for row in rows]
    for column in ("loss", "sup", "unsup", "proto"):
        values = [float(row[column]) for row in rows]
        if any(values):
            ax_loss.plot(steps, values, label=column, linewidth=0.8)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training losses")
    for key, label in (("miou", "linear head"), ("proto_miou", "prototype head")):
        points = [(h["epoch"], 100 * h[key]) for h in history if h.get(key) is not None]
        if points:
            ax_miou.plot(*zip(*points), marker="o", label=label)
    ax_miou.set(xlabel="epoch", ylabel="mIoU (%)", title="validation (center crop)")
    for axis in (ax_loss, ax_miou):
        if axis.lines:
            axis.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


@main_process_only
def save_run_config(cfg, files):
    clean = {k: v for k, v in cfg.items() if not k.startswith("_")}
    write_text_atomic(files.path("config.yaml"), yaml.safe_dump(clean, sort_keys=False))


def resume_seed(files, requested):
    """The seed stored in last.ckpt; an explicit different --seed is an error (it would change the run)."""
    if not os.path.isfile(files.last):
        raise UserError(f"{files.last}: no checkpoint to resume from, expected a previous run in {files.work_dir} "
                        "(or drop --resume)")
    seed = read_meta(files.last)["seed"]
    if requested is not None and requested != seed:
        raise UserError(f"--seed {requested}: the run being resumed used seed {seed}, expected the same seed")
    return seed
