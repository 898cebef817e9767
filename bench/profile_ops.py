"""Per-operator profile of one training step: MindSpore (compiled graph) vs PyTorch (eager), side by side.

Builds both sides with bench/train_speed.py's code (same config, encoder, crop, batch, threads, random weights and
inputs; MindSpore `SupervisedStep` with host dropout masks, PyTorch `convert/torch_model.py` + SGD), each in its own
subprocess. Each side runs the first step and `--warmup` more untimed, times `--steps` steps without a profiler
(the step wall time), then profiles `--steps` more steps:
- MindSpore: `mindspore.Profiler` (works on CPU in 2.10: FRAMEWORK/cpu_op_detail_info_0.csv has every kernel's
  total time, its full scope name tells forward from backward and optimizer; `profile_memory=True` also records
  the runtime allocator's allocated bytes over time);
- PyTorch: `torch.profiler` (CPU activity), self time of every `aten::` op; ops under `Optimizer.step` count as
  optimizer.
Printed: a markdown table by operator kind (ms per step on each side and MindSpore/PyTorch time ratio, > 1 means
MindSpore is slower), where "host/launch overhead" is the wall time of the profiled steps minus the sum of their op
times (Python, host dropout masks, copies, launching, the autograd engine, the profiler's own cost), then the top
operators of each side. The unprofiled step wall time is printed too (the profiler slows PyTorch's ~2400 small op
calls per step more than MindSpore's ~600 kernels).
`--semi` adds a MindSpore-only table of the semi-supervised iteration (the trainer's own `Trainer.semi_iteration`,
built by train_speed.build_trainer: teacher pseudo-labels + the semi step; PyTorch has no counterpart
here).

`--eval` profiles one evaluation forward instead, as `python -m ms_semiseg eval` runs it with the whole-image
protocol (default config: VOC 92, ResNet-101, one random --size H W image, random weights): MindSpore through
`ms_semiseg.eval.predictor.Predictor` with the `static` strategy (the `ms.jit` graph for that shape, logits copied
to numpy), PyTorch through the reference's `torch_predict` (`convert/torch_model.py` in eval mode, no_grad). The
first forward (MindSpore: graph compile + run) is timed apart and reported beside the steady forwards.

    python bench/profile_ops.py [--config experiments/demo/ours/config.yaml] [--arch resnet18] [--crop 80]
        [--batch 5] [--steps 3] [--threads 2] [--rounds 1] [--semi] [--top 12]
    python bench/profile_ops.py --eval [--config experiments/pascal/92/ours/config.yaml] [--arch resnet101]
        [--size 375 500] [--steps 2] [--threads 1]
"""
import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH)
for _path in (REPO_ROOT, BENCH):
    if _path not in sys.path:
        sys.path.insert(0, _path)
import train_speed  # noqa: E402  (bench/train_speed.py: both sides' step builders)

DEMO_CONFIG = os.path.join(REPO_ROOT, "experiments", "demo", "ours", "config.yaml")
VOC_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
OVERHEAD = "host/launch overhead"
KIND_ORDER = ["conv forward", "conv backward", "batchnorm", "bilinear resize", "pooling", "loss/softmax", "matmul",
              "reduction", "data movement", "elementwise", "optimizer", "other"]

# operator names (MindSpore op types, PyTorch aten names), lower case without underscores -> kind. Exact names
# first, then substrings in this order (first match wins); anything else is elementwise.
_EXACT = {
    "conv2d": "conv forward", "convolution": "conv forward",
    "mm": "matmul", "bmm": "matmul", "addmm": "matmul", "linear": "matmul",
    "sum": "reduction", "mean": "reduction", "max": "reduction", "min": "reduction", "amax": "reduction",
    "cat": "data movement", "to": "data movement", "view": "data movement", "t": "data movement",
    "select": "data movement", "index": "data movement", "copy": "data movement", "fill": "data movement",
    "slice": "data movement", "zero": "data movement", "zeros": "data movement", "where": "data movement",
}
_SUBSTRINGS = [
    ("conv backward", ("conv2dbackprop", "convolutionbackward")),
    ("conv forward", ("convolution", "conv2d")),
    ("batchnorm", ("batchnorm",)),
    ("bilinear resize", ("resizebilinear", "upsamplebilinear", "interpolate")),
    ("pooling", ("maxpool", "avgpool", "adaptive")),
    ("loss/softmax", ("softmax", "nllloss", "crossentropy")),
    ("matmul", ("matmul",)),
    ("reduction", ("reduce", "argmax", "argmin", "topk", "sort", "norm", "cumsum")),
    ("data movement", ("concat", "split", "slice", "transpose", "permute", "reshape", "copy", "gather", "scatter",
                       "pad", "tile", "broadcast", "expand", "stack", "assign", "tensormove", "contiguous",
                       "clone", "empty", "zeros", "ones", "fill", "asstrided", "index", "flatten", "squeeze",
                       "masked", "tocopy", "resize", "identity", "depend", "cast", "detach", "alias", "unfold",
                       "onehot", "select", "narrow", "unbind", "chunk", "nonzero", "arange", "full")),
]


def classify(name):
    """Kind of an operator name (MindSpore op type or aten op without `aten::`)."""
    key = name.lower().replace("_", "")
    if key in _EXACT:
        return _EXACT[key]
    for kind, needles in _SUBSTRINGS:
        if any(needle in key for needle in needles):
            return kind
    return "elementwise"


# ---------------------------------------------------------------------------------------------------- MindSpore

def _ms_profile(run, steps, folder):
    import mindspore as ms
    profiler = ms.Profiler(output_path=folder, profile_memory=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run()
    profiled_wall = (time.perf_counter() - start) / steps * 1000.0
    profiled_cpu = (time.process_time() - cpu_start) / steps * 1000.0
    profiler.stop()
    profiler.analyse()
    details = glob.glob(os.path.join(folder, "**", "FRAMEWORK", "cpu_op_detail_info_*.csv"), recursive=True)
    if not details:
        raise SystemExit(f"mindspore.Profiler wrote no cpu_op_detail_info csv under {folder}")
    ops = {}
    with open(details[0]) as handle:
        for row in csv.DictReader(handle):
            scope = row["full_op_name"]
            kind = "optimizer" if "optimizer" in scope.lower() else classify(row["op_type"])
            if kind == "conv forward" and scope.startswith("Gradients/"):
                kind = "conv backward"
            key = f"{row['op_type']}{' (grad)' if scope.startswith('Gradients/') else ''}"
            entry = ops.setdefault(key, {"kind": kind, "ms": 0.0, "calls": 0})
            entry["ms"] += float(row["op_total_time(ms)"]) / steps
            entry["calls"] += int(row["op_occurrences"]) / steps
    peak = 0
    for record in glob.glob(os.path.join(folder, "**", "FRAMEWORK", "cpu_ms_memory_record_*.txt"), recursive=True):
        with open(record) as handle:
            next(handle, None)
            for line in handle:
                fields = line.strip().split(",")
                if len(fields) >= 2 and fields[1].isdigit():
                    peak = max(peak, int(fields[1]))
    return ops, peak / 2 ** 20, profiled_wall, profiled_cpu


def unprofiled_ms(step, args, rss_marks):
    """{"first_ms", "wall_ms", "cpu_ms"}: the first call's wall time (compile, caches), then the mean wall time and
    process CPU time (all threads) of `step` over args.steps after args.warmup more calls. On a core shared with
    other jobs the CPU time is the steadier figure: time spent waiting for the core is not in it. Appends the peak
    RSS after the first call and after the others to `rss_marks`."""
    start = time.perf_counter()
    step()
    first = (time.perf_counter() - start) * 1000.0
    rss_marks.append(train_speed.peak_rss_mb())
    for _ in range(args.warmup):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    rss_marks.append(train_speed.peak_rss_mb())
    return {"first_ms": first, "wall_ms": (time.perf_counter() - start) / args.steps * 1000.0,
            "cpu_ms": (time.process_time() - cpu_start) / args.steps * 1000.0, "rss_stages_mb": rss_marks}


# Peak RSS stages of an evaluation forward's process (train_speed.RSS_STAGES for a training step).
EVAL_RSS_STAGES = ("python and numpy", "framework imported", "model and predictor built",
                   "first forward (MindSpore static: graph compile + run)",
                   "warm-up and timed forwards")


def eval_image(args):
    """The one random normalised (1, 3, H, W) float32 image both sides' evaluation forwards see."""
    import numpy as np
    return np.random.default_rng(0).standard_normal((1, 3, *args.size)).astype(np.float32)


def build_mindspore_eval(args):
    """One evaluation forward as `ms_semiseg eval` makes it: Predictor (static strategy: a graph per input shape,
    compiled at the first call), numpy image in, numpy logits of both heads out."""
    from ms_semiseg.eval.predictor import Predictor, prepare_device
    from ms_semiseg.models import create_model
    prepare_device("CPU", args.threads)
    _, net = train_speed.net_config(args)
    train_speed._mindspore().set_seed(0)
    model = create_model(net)
    model.set_train(False)
    predictor, image = Predictor(model, args.strategy), eval_image(args)
    return lambda: predictor(image)


def run_mindspore(args):
    if args.side == "mindspore-eval":
        build = build_mindspore_eval
    elif args.side == "mindspore-semi":
        def build(a):
            return train_speed.build_trainer(a)["semi"]
    else:
        def build(a):
            return train_speed.build_mindspore(a)["sup"]
    run, marks = train_speed.built_with_stages(train_speed._mindspore, build, args)
    timing = unprofiled_ms(run, args, marks)
    rss = train_speed.peak_rss_mb()
    folder = tempfile.mkdtemp(prefix="ms_profile_")
    try:
        ops, peak_alloc, profiled_wall, profiled_cpu = _ms_profile(run, args.steps, folder)
    finally:
        if args.keep_trace:
            shutil.copytree(folder, os.path.join(args.keep_trace, args.side), dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    return {**timing, "profiled_wall_ms": profiled_wall, "profiled_cpu_ms": profiled_cpu, "ops": ops,
            "peak_alloc_mb": peak_alloc, "unprofiled_rss_mb": rss}


# ------------------------------------------------------------------------------------------------------ PyTorch

def _under_optimizer(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return True
        parent = parent.cpu_parent
    return False


def build_torch_eval(args):
    """One evaluation forward as the PyTorch reference pipeline makes it (ms_semiseg.eval.reference.torch_predict:
    no_grad, `pred` upsampled to the input size, `proto` at full resolution already)."""
    import torch
    from convert.torch_model import TorchModelBuilder
    from ms_semiseg.eval.reference import torch_predict
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _, net = train_speed.net_config(args)
    predict, image = torch_predict(TorchModelBuilder(net).eval()), torch.from_numpy(eval_image(args))
    return lambda: predict(image)


def run_torch(args):
    step, marks = train_speed.built_with_stages(
        lambda: __import__("torch"), build_torch_eval if args.side == "torch-eval" else train_speed.build_torch, args)
    timing = unprofiled_ms(step, args, marks)
    import torch
    from torch.profiler import ProfilerActivity, profile
    rss = train_speed.peak_rss_mb()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        profiled_wall = (time.perf_counter() - start) / args.steps * 1000.0
        profiled_cpu = (time.process_time() - cpu_start) / args.steps * 1000.0
    ops = {}
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue  # record_function ranges, autograd nodes: their self time is host overhead
        name = event.name[len("aten::"):]
        optimizer = _under_optimizer(event)
        kind = "optimizer" if optimizer else classify(name)
        entry = ops.setdefault(name + (" (optimizer)" if optimizer else ""), {"kind": kind, "ms": 0.0, "calls": 0})
        entry["ms"] += event.self_cpu_time_total / 1000.0 / args.steps
        entry["calls"] += 1 / args.steps
    if args.keep_trace:
        os.makedirs(args.keep_trace, exist_ok=True)
        prof.export_chrome_trace(os.path.join(args.keep_trace, "torch_trace.json"))
    del torch
    return {**timing, "profiled_wall_ms": profiled_wall, "profiled_cpu_ms": profiled_cpu, "ops": ops,
            "unprofiled_rss_mb": rss}


# ------------------------------------------------------------------------------------------------------- driver

def child(args):
    result = run_torch(args) if args.side.startswith("torch") else run_mindspore(args)
    result["peak_rss_mb"] = train_speed.peak_rss_mb()
    print("RESULT " + json.dumps(result))


def spawn(args, side):
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--config", args.config, "--arch",
               args.arch, "--crop", str(args.crop), "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--size", *map(str, args.size),
               "--strategy", args.strategy]
    command += (["--semi"] if side == "mindspore-semi" else []) + (["--keep-trace", args.keep_trace]
                                                                   if args.keep_trace else [])
    out = subprocess.run(command, env=train_speed.side_env(args, side.startswith("torch")), capture_output=True,
                         text=True, cwd=REPO_ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{side} side failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def best_of_rounds(args, sides):
    """Each side `--rounds` times in ABBA order; per side the round with the shortest unprofiled step (on a shared
    machine the other jobs' load only ever adds time)."""
    best = {}
    for index in range(args.rounds):
        for side in (sides if index % 2 == 0 else tuple(reversed(sides))):
            result = spawn(args, side)
            if side not in best or result["wall_ms"] < best[side]["wall_ms"]:
                best[side] = result
    return best


def by_kind(result):
    kinds = {}
    for entry in result["ops"].values():
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0.0) + entry["ms"]
    kinds[OVERHEAD] = result["profiled_wall_ms"] - sum(kinds.values())  # both from the profiled steps
    return kinds


def _ms(value):
    return "-" if value is None else f"{value:.1f}"


def _ratio(ours, theirs):
    if ours is None or theirs is None or theirs <= 0 or ours < 0:
        return "-"
    return f"{ours / theirs:.2f}"


def kind_table(results, unit="step"):
    """Markdown lines: kind | MindSpore ms/`unit` | PyTorch ms/`unit` | ratio; then op sum and `unit` wall times
    (profiled, unprofiled) and, where measured, the first call and its excess over an unprofiled call (compile)."""
    ms_kinds, pt_kinds = by_kind(results["mindspore"]), by_kind(results["torch"])
    rows = [kind for kind in KIND_ORDER + [OVERHEAD] if kind in ms_kinds or kind in pt_kinds]
    lines = [f"| operator kind | MindSpore ms/{unit} | PyTorch ms/{unit} | ratio MS/PT |",
             "| --- | ---: | ---: | ---: |"]
    for kind in sorted(rows, key=lambda k: -max(ms_kinds.get(k, 0.0), pt_kinds.get(k, 0.0))):
        ours, theirs = ms_kinds.get(kind), pt_kinds.get(kind)
        lines.append(f"| {kind} | {_ms(ours)} | {_ms(theirs)} | {_ratio(ours, theirs)} |")
    ours = sum(v for k, v in ms_kinds.items() if k != OVERHEAD)
    theirs = sum(v for k, v in pt_kinds.items() if k != OVERHEAD)
    lines.append(f"| **sum of op times** | {_ms(ours)} | {_ms(theirs)} | {_ratio(ours, theirs)} |")
    for key, title in (("profiled_wall_ms", f"**{unit} wall time, profiled**"),
                       ("wall_ms", f"**{unit} wall time, unprofiled**"),
                       ("profiled_cpu_ms", f"{unit} CPU time, profiled"), ("cpu_ms", f"{unit} CPU time, unprofiled")):
        if key in results["mindspore"] and key in results["torch"]:
            ours, theirs = results["mindspore"][key], results["torch"][key]
            lines.append(f"| {title} | {_ms(ours)} | {_ms(theirs)} | {_ratio(ours, theirs)} |")
    if all("first_ms" in results[side] for side in ("mindspore", "torch")):
        firsts = [results[side]["first_ms"] for side in ("mindspore", "torch")]
        extra = [first - results[side]["wall_ms"] for first, side in zip(firsts, ("mindspore", "torch"))]
        lines.append(f"| first {unit} (MindSpore: graph compile + run) | {_ms(firsts[0])} | {_ms(firsts[1])} | "
                     f"{_ratio(*firsts)} |")
        lines.append(f"| compile / set-up (first {unit} - unprofiled {unit}) | {_ms(extra[0])} | {_ms(extra[1])} | "
                     f"{_ratio(*extra)} |")
    return lines


def top_ops(result, top, unit="step"):
    lines = [f"| operator | kind | calls/{unit} | ms/{unit} |", "| --- | --- | ---: | ---: |"]
    for name, entry in sorted(result["ops"].items(), key=lambda item: -item[1]["ms"])[:top]:
        lines.append(f"| {name} | {entry['kind']} | {entry['calls']:.0f} | {entry['ms']:.1f} |")
    calls = sum(entry["calls"] for entry in result["ops"].values())
    lines.append(f"| (all {len(result['ops'])} operator types) | | {calls:.0f} | "
                 f"{sum(e['ms'] for e in result['ops'].values()):.1f} |")
    return lines


def ms_only_table(result):
    kinds = by_kind(result)
    lines = ["| operator kind | MindSpore ms/iteration |", "| --- | ---: |"]
    for kind, value in sorted(kinds.items(), key=lambda item: -item[1]):
        lines.append(f"| {kind} | {value:.1f} |")
    lines.append(f"| **iteration wall time, profiled** | {result['profiled_wall_ms']:.1f} |")
    lines.append(f"| **iteration wall time, unprofiled** | {result['wall_ms']:.1f} |")
    return lines


def rss_line(results):
    """Peak RSS of each side's process (ru_maxrss; each side runs in its own subprocess), before its profiler ran
    and at its end."""
    ours, theirs = results["mindspore"], results["torch"]
    line = (f"peak RSS before profiling: MindSpore {ours['unprofiled_rss_mb']:.0f} MiB, PyTorch "
            f"{theirs['unprofiled_rss_mb']:.0f} MiB ({_ratio(ours['unprofiled_rss_mb'], theirs['unprofiled_rss_mb'])}x)"
            f"; at the end (profilers included): MindSpore {ours['peak_rss_mb']:.0f} MiB (runtime allocator peak "
            f"{ours['peak_alloc_mb']:.0f} MiB), PyTorch {theirs['peak_rss_mb']:.0f} MiB")
    return line


def report_sides(results, top, unit):
    print("\n".join(kind_table(results, unit)))
    for side, title in (("mindspore", "MindSpore"), ("torch", "PyTorch")):
        print(f"\nTop {top} operators, {title}:\n")
        print("\n".join(top_ops(results[side], top, unit)))
    print("\n" + rss_line(results))
    print("\npeak RSS by stage, before profiling (each side in its own process):\n")
    stages = EVAL_RSS_STAGES if unit == "forward" else train_speed.RSS_STAGES
    print("\n".join(train_speed.rss_stage_table(results["mindspore"]["rss_stages_mb"],
                                                results["torch"]["rss_stages_mb"], stages)))


def parse_args(argv=None):
    """The options, with --config and --arch resolved (training: the demo config, resnet18; --eval: VOC 92 and the
    config's encoder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None,
                        help="config whose net section is used (default: demo; with --eval: VOC 92)")
    parser.add_argument("--arch", default=None,
                        help="encoder (resnet18/34/50/101/152; default resnet18, with --eval the config's)")
    parser.add_argument("--crop", type=int, default=80)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, then as many profiled steps, per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--semi", action="store_true", help="also profile our semi-supervised iteration")
    parser.add_argument("--eval", action="store_true",
                        help="profile one evaluation forward (whole-image protocol) instead of a training step")
    parser.add_argument("--size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"),
                        help="--eval: the image size (default 375 500, VOC's most common)")
    parser.add_argument("--strategy", choices=("static", "pynative"), default="static",
                        help="--eval: how MindSpore runs the forward, as `eval --strategy` (default: static graph)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per side in ABBA order, the fastest kept (for a machine shared with other jobs)")
    parser.add_argument("--top", type=int, default=12, help="operators listed per side")
    parser.add_argument("--keep-trace", default=None, help="keep the raw profiler outputs in this folder")
    train_speed.add_torch_isa_argument(parser)
    parser.add_argument("--side", choices=("mindspore", "mindspore-semi", "mindspore-eval", "torch", "torch-eval"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eval and args.semi:
        parser.error("--semi profiles training: not with --eval")
    args.config = os.path.abspath(args.config or (VOC_CONFIG if args.eval else DEMO_CONFIG))
    if args.arch is None:
        args.arch = config_arch(args.config) if args.eval else "resnet18"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        return child(args)
    if args.eval:
        return main_eval(args)
    print(f"{args.arch}, batch {args.batch} x 3 x {args.crop} x {args.crop}, {args.threads} threads, "
          f"{args.steps} timed + {args.steps} profiled steps after {1 + args.warmup} untimed, best of {args.rounds} "
          f"round(s) per side, config {os.path.relpath(args.config, REPO_ROOT)}, oneDNN ISA: MindSpore AVX2, "
          f"PyTorch {args.torch_isa}\n")
    results = best_of_rounds(args, ("mindspore", "torch"))
    report_sides(results, args.top, "step")
    if args.semi:
        semi = best_of_rounds(args, ("mindspore-semi",))["mindspore-semi"]
        print("\nMindSpore semi-supervised iteration (teacher pseudo-labels + the semi step), no PyTorch counterpart:\n")
        print("\n".join(ms_only_table(semi)))
        print(f"\nTop {args.top} operators, MindSpore semi-supervised iteration:\n")
        print("\n".join(top_ops(semi, args.top)))
    return results


def config_arch(config):
    """The encoder a config names (`core.models.resnet.resnet101` -> `resnet101`)."""
    from ms_semiseg.config import load_config, net_config
    return str(net_config(load_config(config))["encoder"]["type"]).rsplit(".", 1)[-1]


def main_eval(args):
    height, width = args.size
    print(f"evaluation forward, {args.arch}, one 1 x 3 x {height} x {width} image (whole-image protocol), "
          f"{args.threads} threads, {args.steps} timed + {args.steps} profiled forwards after {1 + args.warmup} "
          f"untimed, best of {args.rounds} round(s) per side, config {os.path.relpath(args.config, REPO_ROOT)}; "
          f"MindSpore: Predictor, {args.strategy}; oneDNN ISA: MindSpore AVX2, PyTorch {args.torch_isa}\n")
    best = best_of_rounds(args, ("mindspore-eval", "torch-eval"))
    results = {"mindspore": best["mindspore-eval"], "torch": best["torch-eval"]}
    report_sides(results, args.top, "forward")
    return results


if __name__ == "__main__":
    main()
