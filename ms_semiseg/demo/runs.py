"""Training and evaluating one demo method as `python -m ms_semiseg train|eval` child processes: reuse of finished
work (a record with the run's fingerprint beside it), resume of an interrupted run, one-line failure reasons."""
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .specs import DEFAULT_METHODS, REPO_ROOT, RUN_FOLDER_MARKERS, Method, RunSpec


def remove_tree(path, what):
    """Deletes a folder the caller has checked to be the demo's own."""
    if os.path.isdir(path):
        shutil.rmtree(path)
        print(f"removed {what} {path}")


def read_record(spec):
    try:
        with open(spec.record_path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if record.get("fingerprint") == spec.fingerprint() else None


def write_record(spec, record):
    from ..utils.atomic import write_text_atomic
    write_text_atomic(spec.record_path, json.dumps(record, indent=2) + "\n")


def clear_run_folder(spec):
    """Removes an earlier run of another config/seed from the method's folder (only a run folder)."""
    folder = spec.work_dir
    if not os.path.isdir(folder) or not os.listdir(folder):
        return
    if not any(os.path.exists(os.path.join(folder, name)) for name in RUN_FOLDER_MARKERS):
        raise UserError(f"{folder}: not empty and not a training run folder, expected an empty folder or one made by "
                        "the demo (choose another --out-dir)")
    remove_tree(folder, f"earlier {spec.method.key} run")


def file_stamp(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def child_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_logged(command, log_path):
    """Runs `python -m ms_semiseg ...`, showing its output live and keeping a copy in log_path.
    Returns (exit code, wall seconds, CPU seconds)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("GLOG_v", "3")
    start, cpu_start = time.perf_counter(), child_cpu_seconds()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: process.stdout.read1(4096), b""):  # chunks keep tqdm's \r updates live
            log.write(chunk)
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
        code = process.wait()
    return code, time.perf_counter() - start, child_cpu_seconds() - cpu_start


def failure_reason(log_path, code):
    """The command's `error: ...` line, else its exit code."""
    try:
        lines = Path(log_path).read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        lines = []
    errors = [line.strip() for line in lines if line.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else f"exit code {code}, see {log_path}"


def module_command(name, spec, data_dir, device, *args):
    command = [sys.executable, "-m", "ms_semiseg", name, "--config", spec.config_path, "--data-root", data_dir]
    if device:
        command += ["--device", device]
    return command + list(args) + ["--opts", *spec.opts]


class MethodFailed(Exception):
    """A step of one method failed; `reason` is one line."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def train(spec, data_dir, device, fresh):
    """Trains (or reuses / resumes) one method; returns its record."""
    record = None if fresh else read_record(spec)
    if record and record.get("status") == "trained" and os.path.isfile(spec.best_ckpt):
        print(f"{spec.method.key}: reusing the finished run in {spec.work_dir} (same config and seed)", flush=True)
        return dict(record, reused=True)
    resume = bool(record) and os.path.isfile(spec.last_ckpt)
    if not resume:
        clear_run_folder(spec)
        os.makedirs(spec.work_dir, exist_ok=True)
    write_record(spec, {"fingerprint": spec.fingerprint(), "method": spec.method.key, "seed": spec.seed,
                        "status": "training", "iterations": spec.iterations})
    print(f"\n== {spec.method.title}: training {spec.iterations} iterations -> {spec.work_dir}"
          + (" (resuming)" if resume else ""), flush=True)
    command = module_command("train", spec, data_dir, device, "--work-dir", spec.work_dir, "--seed", str(spec.seed),
                             *(["--resume"] if resume else []))
    log_path = os.path.join(spec.work_dir, "train.log")
    code, wall, cpu = run_logged(command, log_path)
    if code != 0:
        raise MethodFailed(f"training failed: {failure_reason(log_path, code)}")
    record = {"fingerprint": spec.fingerprint(), "method": spec.method.key, "seed": spec.seed, "status": "trained",
              "iterations": spec.iterations, "train_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
              "resumed": resume}
    write_record(spec, record)
    return dict(record, reused=False)


def evaluate(spec, record, data_dir, device):
    """Evaluates best.ckpt (or reuses the metrics of the same checkpoint); returns the updated record."""
    stamp = file_stamp(spec.best_ckpt)
    previous = record.get("eval")
    metrics_path = os.path.join(spec.eval_dir, "metrics.json")
    if previous and previous.get("ckpt") == stamp and os.path.isfile(metrics_path):
        return record
    print(f"\n== {spec.method.title}: evaluating {spec.best_ckpt}", flush=True)
    command = module_command("eval", spec, data_dir, device, "--ckpt", spec.best_ckpt, "--save-dir", spec.eval_dir)
    log_path = os.path.join(spec.work_dir, "eval.log")
    code, wall, cpu = run_logged(command, log_path)
    if code != 0:
        raise MethodFailed(f"evaluation failed: {failure_reason(log_path, code)}")
    with open(metrics_path, encoding="utf-8") as handle:
        metrics = json.load(handle)
    stored = {key: value for key, value in record.items() if key != "reused"}
    stored["eval"] = {"ckpt": stamp, "miou": metrics["miou"], "miou_proto": metrics.get("miou_proto"),
                      "class_iou": list(metrics["heads"]["linear"]["iou"].values()),  # in class-index order
                      "eval_s": round(wall, 1), "eval_cpu_s": round(cpu, 1)}
    write_record(spec, stored)
    return dict(stored, reused=record.get("reused", False))


@dataclass
class Result:
    method: Method
    iterations: int = None
    miou: float = None
    miou_proto: float = None
    class_iou: list = None
    train_s: float = None
    reused: bool = False
    reason: str = None  # why there is no number
    spec: RunSpec = None

    @property
    def ok(self):
        return self.miou is not None


def run_method(spec, data_dir, device, fresh):
    try:
        record = evaluate(spec, train(spec, data_dir, device, fresh), data_dir, device)
    except MethodFailed as failure:
        if not spec.method.optional:
            raise UserError(f"{spec.method.key} ({spec.config_path}): {failure.reason}") from None
        print(f"{spec.method.title}: {failure.reason}", file=sys.stderr)
        return Result(spec.method, spec.iterations, reason=failure.reason, spec=spec)
    scores = record["eval"]
    return Result(spec.method, spec.iterations, scores["miou"], scores["miou_proto"], scores.get("class_iou"),
                  record.get("train_s"), record.get("reused", False), spec=spec)


def left_out_reason(method):
    if method.key not in DEFAULT_METHODS:
        return ("not in the default run, which fits the budget: add it with --methods "
                f"{' '.join(DEFAULT_METHODS + (method.key,))}")
    return "not run (left out of --methods)"
