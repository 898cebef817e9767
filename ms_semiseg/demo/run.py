"""`python -m ms_semiseg demo`: the bundled CPU demo end to end (the README's `bash scripts/demo.sh`).

Steps: generate the demo dataset (`ms_semiseg.demo.make_data`: 1000 images of 128x128, 5 classes, 50 labeled =
1/16 of the 800 train images, 750 unlabeled, 200 val; `--data-seed` picks another generated dataset); train the
supervised-only baseline and PCR (and, with `--methods`, the mean teacher without prototypes and BRPG) with the
configs of experiments/demo/{suponly,meanteacher,ours,brpg}/ for the same number of iterations (the baseline's epochs are derived from
PCR's iterations); evaluate each with `ms_semiseg eval` (VOC whole-image protocol); draw a prediction grid; print
a table and the path of every output. The last line is `demo: suponly=<mIoU> pcr=<mIoU> brpg=<mIoU or n/a>`
(linear head, percent).

Work already done is reused: the dataset when its meta.json matches, a training run when its config (with every
override) and seed match (an interrupted run is resumed), an evaluation when its checkpoint is unchanged. `--fresh`
redoes everything. The mean teacher and BRPG are optional: when one cannot run, its row says n/a and why.
"""
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .make_data import fraction

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS_DIR = os.path.join(REPO_ROOT, "experiments", "demo")
DEFAULT_DATA_DIR = "data/demo"
DEFAULT_OUT_DIR = "outputs/demo"
QUICK_OUT_DIR = "outputs/demo_quick"  # --quick keeps its tiny dataset in <out-dir>/data
DEFAULT_SEED = 0
DATA_SEED = 0  # the bundled dataset; --seed varies the training runs only, --data-seed the generated dataset
BUDGET_S = 15 * 60  # the README's promise for a 2-core CPU machine
RECORD_NAME = "demo_run.json"
SUMMARY_NAME = "summary.json"
FIGURE_NAME = "predictions.png"
RUN_FOLDER_MARKERS = (RECORD_NAME, "config.yaml", "checkpoints", "log.csv")


@dataclass(frozen=True)
class Method:
    key: str  # experiments/demo/<key>/config.yaml and the output sub-folder
    title: str  # table row and figure column
    line_name: str  # name in the last line
    optional: bool = False  # a failure becomes an n/a row instead of stopping the demo


METHODS = (Method("suponly", "supervised only", "suponly"),
           Method("meanteacher", "mean teacher (no prototypes)", "meanteacher", optional=True),
           Method("ours", "PCR (ours)", "pcr"),
           Method("brpg", "BRPG", "brpg", optional=True))
LAST_LINE_METHODS = ("suponly", "pcr", "brpg")  # the last line's fixed format (scripts and tests read it)
METHOD_KEYS = tuple(method.key for method in METHODS)
# BRPG needs a third epoch (sampling window, then clustering): about 13 more minutes on 2 CPU cores, past the budget
DEFAULT_METHODS = ("suponly", "ours")
BASELINE, REFERENCE = "suponly", "ours"  # the baseline runs as many iterations as PCR

# --quick: a smoke test of every step in about a minute of training (tests/test_demo.py); numbers mean nothing.
QUICK_DATA = {"num_images": 16, "size": 48, "num_val": 4, "labeled_fraction": 1 / 3}
QUICK_OPTS = {"all": ["trainer.epochs=3", "dataset.batch_size=4", "dataset.train.crop.size=[32,32]", "dataset.val.crop.size=[48,48]",
                      "dataset.workers=1"],
              "ours": ["net.proto_head.select_granularity=8"],
              "brpg": ["trainer.prototype.sample_pixel_num=50", "trainer.prototype.unsup_sample_num=20",
                       "trainer.prototype.queue_len=500", "trainer.prototype.grid_num=8"]}
FULL_DATA = {"num_images": 1000, "size": 128, "num_val": None, "labeled_fraction": 1 / 16}


# ---------------------------------------------------------------------------------------------------- arguments


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"training seed (default {DEFAULT_SEED})")
    parser.add_argument("--device", default=None, help="CPU or GPU (default: GPU when MindSpore can use one, else CPU)")
    parser.add_argument("--fresh", action="store_true", help="regenerate the data and retrain everything")
    parser.add_argument("--methods", nargs="+", choices=METHOD_KEYS, default=list(DEFAULT_METHODS),
                        help="which experiments/demo/<method> to run (default: suponly ours, which fit the 15-minute "
                             "budget; add brpg for BRPG, about 13 minutes more; a method left out shows n/a)")
    parser.add_argument("--data-seed", type=int, default=DATA_SEED,
                        help=f"seed of the generated dataset (default {DATA_SEED}, the one the demo was tuned on; "
                             "others are held-out checks, docs/demo.md)")
    parser.add_argument("--data-dir", default=None, help=f"dataset folder (default {DEFAULT_DATA_DIR}, "
                                                         f"{DEFAULT_DATA_DIR}_seed<N> for --data-seed N; "
                                                         "<out-dir>/data with --quick)")
    parser.add_argument("--labeled-fraction", type=fraction, default=FULL_DATA["labeled_fraction"],
                        help="labeled share of the generated train images (default 1/16; another value regenerates "
                             "the dataset folder)")
    parser.add_argument("--out-dir", default=None, help=f"runs, figure and summary (default {DEFAULT_OUT_DIR}; "
                                                        f"{QUICK_OUT_DIR} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data (16 images of 48x48) and a few iterations: checks the pipeline, not the method")
    parser.add_argument("--opts", nargs="*", default=[], metavar="[METHOD:]KEY=VALUE",
                        help="config overrides for every method, or for one with a prefix: ours:trainer.epochs=3")


def _checked_seed(seed, option="--seed"):
    if seed < 0:
        raise UserError(f"{option} {seed}: expected a non-negative integer")
    return seed


def default_data_dir(data_seed):
    return DEFAULT_DATA_DIR if data_seed == DATA_SEED else f"{DEFAULT_DATA_DIR}_seed{data_seed}"


def repo_path(path):
    """Default folders are relative to the repo root (where scripts/demo.sh runs); user paths to the cwd."""
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(REPO_ROOT, path))


def split_opts(opts):
    """{method: [key=value, ...]} from `[METHOD:]KEY=VALUE` strings (no prefix: every method)."""
    per_method = {key: [] for key in METHOD_KEYS}
    for opt in opts:
        prefix, sep, rest = opt.partition(":")
        if sep and prefix in per_method and "=" not in prefix:
            per_method[prefix].append(rest)
        elif sep and "=" not in prefix:
            raise UserError(f"--opts {opt}: unknown method prefix {prefix!r}, expected one of {list(METHOD_KEYS)}")
        else:
            for values in per_method.values():
                values.append(opt)
    return per_method


# ---------------------------------------------------------------------------------------------------- dataset


def remove_tree(path, what):
    """Deletes a folder the caller has checked to be the demo's own."""
    if os.path.isdir(path):
        shutil.rmtree(path)
        print(f"removed {what} {path}")


def prepare_data(data_dir, data_args, fresh):
    """The demo dataset (generated, or reused when its meta.json matches); returns its meta dict."""
    from .make_data import GENERATOR, is_up_to_date, make_dataset, read_meta, requested_args, summary_line
    out = Path(data_dir)
    meta = read_meta(out)
    if fresh and meta and meta.get("generator") == GENERATOR:
        remove_tree(data_dir, "dataset")
    start = time.perf_counter()
    reused = is_up_to_date(out, requested_args(**data_args))
    meta = make_dataset(out, **data_args)
    print(summary_line(out, meta, time.perf_counter() - start, reused), flush=True)
    return meta


def data_opts(data_dir):
    """Points a demo config at `data_dir` (the configs name data/demo relative to their folder)."""
    return [f"dataset.train.data_root={data_dir}", f"dataset.train.data_list={data_dir}/splits/labeled.txt",
            f"dataset.val.data_root={data_dir}", f"dataset.val.data_list={data_dir}/splits/val.txt"]


# ---------------------------------------------------------------------------------------------------- runs


@dataclass
class RunSpec:
    method: Method
    config_path: str
    opts: list
    work_dir: str
    seed: int
    cfg: dict = field(repr=False)
    iterations: int = 0
    semi: bool = False

    @property
    def record_path(self):
        return os.path.join(self.work_dir, RECORD_NAME)

    @property
    def best_ckpt(self):
        return os.path.join(self.work_dir, "checkpoints", "best.ckpt")

    @property
    def last_ckpt(self):
        return os.path.join(self.work_dir, "checkpoints", "last.ckpt")

    @property
    def eval_dir(self):
        return os.path.join(self.work_dir, "eval")

    def fingerprint(self):
        """Changes whenever the run would differ: the whole config after overrides, and the seed."""
        clean = {k: v for k, v in self.cfg.items() if not k.startswith("_")}
        text = json.dumps({"config": clean, "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(method, opts, out_dir, seed):
    from ..config import load_config
    from ..train.trainer import plan_from_config
    config_path = os.path.join(EXPERIMENTS_DIR, method.key, "config.yaml")
    cfg = load_config(config_path, opts)
    plan = plan_from_config(cfg)
    return RunSpec(method, config_path, list(opts), os.path.join(out_dir, method.key), seed, cfg,
                   plan.total_steps, plan.semi)


def baseline_epochs(baseline, reference):
    """Epochs that give the baseline the reference's iteration count (its epochs are n_labeled / batch long)."""
    per_epoch = baseline.iterations // int(baseline.cfg["trainer"]["epochs"])
    return max(1, round(reference.iterations / per_epoch))


def build_specs(methods, per_method_opts, common_opts, out_dir, seed):
    """RunSpecs of the selected methods; the baseline's trainer.epochs matches PCR's iterations unless set."""
    specs = {}
    for method in METHODS:
        if method.key in methods or method.key == REFERENCE:
            specs[method.key] = load_spec(method, common_opts + per_method_opts[method.key], out_dir, seed)
    if BASELINE in specs and not any(o.startswith("trainer.epochs=") for o in per_method_opts[BASELINE]):
        epochs = baseline_epochs(specs[BASELINE], specs[REFERENCE])
        opts = common_opts + per_method_opts[BASELINE] + [f"trainer.epochs={epochs}"]
        specs[BASELINE] = load_spec(specs[BASELINE].method, opts, out_dir, seed)
    return [specs[m.key] for m in METHODS if m.key in methods]


# ---------------------------------------------------------------------------------------------------- records


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


# ---------------------------------------------------------------------------------------------------- commands


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


# ---------------------------------------------------------------------------------------------------- results


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


def brpg_unavailable_reason():
    """Why BRPG cannot run here, or None (the trainer gained BRPG in ms_semiseg.train.brpg_step)."""
    import importlib.util
    if importlib.util.find_spec("ms_semiseg.train.brpg_step") is None:
        return "BRPG is not wired into the trainer yet (ms_semiseg.train.brpg_step is missing)"
    return None


def run_method(spec, data_dir, device, fresh):
    if spec.method.key == "brpg":
        reason = brpg_unavailable_reason()
        if reason:
            return Result(spec.method, spec.iterations, reason=reason, spec=spec)
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


def format_duration(seconds):
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def percent(value, missing="n/a"):
    return missing if value is None else f"{value:.2f}"


def labels_used(meta, semi):
    counts = meta["counts"]
    labeled = f"{counts['labeled']} of {counts['train']}"
    return labeled, (str(counts["unlabeled"]) if semi else "0")


def table_rows(results, meta):
    header = ["method", "labeled images", "unlabeled images", "iterations", "mIoU linear", "mIoU proto",
              "train time"]
    rows = [header]
    for result in results:
        spec = result.spec
        labeled, unlabeled = labels_used(meta, spec.semi if spec else False)
        has_proto = spec is not None and "proto_head" in spec.cfg.get("net", {})
        train_time = format_duration(result.train_s) + (" (reused)" if result.reused else "")
        rows.append([result.method.title, labeled, unlabeled, str(result.iterations or "-"), percent(result.miou),
                     percent(result.miou_proto) if has_proto and result.ok else "-",
                     train_time if result.ok else "-"])
    return rows


def format_table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def class_table_rows(results, class_names):
    """Per-class IoU of the linear head, one column per method with a result."""
    scored = [r for r in results if r.ok and r.class_iou and len(r.class_iou) == len(class_names)]
    rows = [["class"] + [r.method.title for r in scored]]
    rows += [[name] + [percent(r.class_iou[i]) for r in scored] for i, name in enumerate(class_names)]
    return rows if scored else []


def last_line(results):
    by_name = {result.method.line_name: result for result in results}
    parts = [f"{name}={percent(by_name[name].miou) if name in by_name else 'n/a'}" for name in LAST_LINE_METHODS]
    return "demo: " + " ".join(parts)


def output_paths(results, data_dir, figure_path, summary_path):
    lines = [f"  dataset:        {data_dir} (meta.json, splits/, JPEGImages/, SegmentationClassAug/)"]
    for result in results:
        spec = result.spec
        if spec is None or not os.path.isdir(spec.work_dir):
            continue
        lines.append(f"  {result.method.key}:")
        for label, path in (("config", spec.config_path), ("best.ckpt", spec.best_ckpt),
                            ("log.csv", os.path.join(spec.work_dir, "log.csv")),
                            ("curves.png", os.path.join(spec.work_dir, "curves.png")),
                            ("train log", os.path.join(spec.work_dir, "train.log")),
                            ("metrics.json", os.path.join(spec.eval_dir, "metrics.json")),
                            ("eval log", os.path.join(spec.work_dir, "eval.log")),
                            ("predictions", os.path.join(spec.eval_dir, "color"))):
            if os.path.exists(path):
                lines.append(f"    {label + ':':14s}{path}")
    if figure_path:
        lines.append(f"  figure:         {figure_path}")
    lines.append(f"  summary:        {summary_path}")
    return "\n".join(lines)


def write_figure(results, data_dir, meta, out_dir):
    from ..utils.atomic import ensure_writable_dir
    from .figure import pick_evenly, write_prediction_grid
    shown = [(f"{r.method.title} ({r.miou:.1f})", os.path.join(r.spec.eval_dir, "gray")) for r in results if r.ok]
    if not shown:
        return None
    val_ids = Path(data_dir, "splits", "val.txt").read_text().split()
    ensure_writable_dir(out_dir, "--out-dir folder")
    return write_prediction_grid(os.path.join(out_dir, FIGURE_NAME), data_dir, pick_evenly(val_ids), shown,
                                 meta["classes"])


def summary_payload(results, meta, seed, total_s, figure_path):
    return {"seed": seed, "dataset": meta["args"], "counts": meta["counts"], "total_s": round(total_s, 1),
            "figure": figure_path,
            "methods": {r.method.line_name: {"miou": r.miou, "miou_proto": r.miou_proto, "iterations": r.iterations,
                                             "train_s": r.train_s, "reused": r.reused, "reason": r.reason,
                                             "work_dir": r.spec.work_dir if r.spec else None} for r in results}}


def print_report(results, meta, outputs, total_s, quick):
    per_class = class_table_rows(results, meta["classes"])
    if per_class:
        print("\nIoU per class (%, linear head)\n" + format_table(per_class))
    print("\n" + format_table(table_rows(results, meta)))
    print("mIoU in percent on the val split (whole image, linear classifier; the prototype head where PCR has it).")
    for result in results:
        if result.reason:
            print(f"{result.method.title}: n/a ({result.reason})")
    budget = "" if quick else f" (the README's budget: {BUDGET_S // 60} min on 2 CPU cores)"
    print(f"\ntotal time {format_duration(total_s)}{budget}")
    print("outputs:\n" + outputs)


# ---------------------------------------------------------------------------------------------------- command


def run(args):
    from ..utils.atomic import write_text_atomic
    start = time.perf_counter()
    seed = _checked_seed(args.seed)
    out_dir = repo_path(args.out_dir or (QUICK_OUT_DIR if args.quick else DEFAULT_OUT_DIR))
    data_dir = repo_path(args.data_dir) if args.data_dir else (
        os.path.join(out_dir, "data") if args.quick else repo_path(default_data_dir(args.data_seed)))
    per_method = split_opts(args.opts)
    data_args = dict(QUICK_DATA if args.quick else FULL_DATA, seed=_checked_seed(args.data_seed, "--data-seed"))
    if not args.quick:
        data_args["labeled_fraction"] = args.labeled_fraction
    meta = prepare_data(data_dir, data_args, args.fresh)
    common = data_opts(data_dir)
    if args.quick:  # preset first, so that --opts can still change it
        common += QUICK_OPTS["all"]
        per_method = {key: QUICK_OPTS.get(key, []) + opts for key, opts in per_method.items()}
    specs = build_specs(args.methods, per_method, common, out_dir, seed)
    results = [run_method(spec, data_dir, args.device, args.fresh) for spec in specs]
    results += [Result(m, reason=left_out_reason(m)) for m in METHODS if m.key not in args.methods]
    results.sort(key=lambda r: METHOD_KEYS.index(r.method.key))
    figure_path = write_figure(results, data_dir, meta, out_dir)
    total_s = time.perf_counter() - start
    summary_path = os.path.join(out_dir, SUMMARY_NAME)
    write_text_atomic(summary_path, json.dumps(summary_payload(results, meta, seed, total_s, figure_path), indent=2)
                      + "\n")
    print_report(results, meta, output_paths(results, data_dir, figure_path, summary_path), total_s, args.quick)
    print(last_line(results), flush=True)
    return 0
