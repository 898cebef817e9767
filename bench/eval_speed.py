"""Evaluation speed: our MindSpore pipeline vs the PyTorch reference pipeline on the same mixed-size images.

    python bench/eval_speed.py [--config CFG] [--mix 5|many] [--images N] [--threads 2] [--strategy static auto]
    python bench/eval_speed.py --mix many --arch resnet18 --scale 0.5 --rounds 1 --strategy static pynative auto

Builds a VOC-layout set of random images, random weights (`python -m convert random`, converted with
`python -m convert pth2ckpt`), then runs, each in its own process so peak RSS is measured separately, with the
same thread count (torch.set_num_threads / MindSpore threads_num, OMP_NUM_THREADS) and each framework's own oneDNN
ISA (AVX2 for MindSpore, see ms_semiseg/__init__.py):
- ours: `python -m ms_semiseg eval` (whole-image protocol, both heads), once per --strategy given;
- reference: `python -m ms_semiseg.eval.reference` (PyTorch eager, U2PL's eval loop).
Image sizes (--mix): `5` cycles the 5 most common VOC sizes (default 20 images); `many` is VOC val's long tail
(default 60 images in 30 sizes: 5 common sizes x 6 images, 5 sizes x 2, 20 sizes x 1). --scale shrinks every size
and --arch swaps the encoder (both sides), for a quick run.
Each side runs --rounds times in ABBA order (ours, ref, ref, ours, ...) and the times are averaged, so that load
from other processes on a shared machine hits both sides alike. Prints images/s for each (the whole evaluation,
model loading and compiles included, and the whole process), their ratio, our graph compiles and the compile
share of the evaluation (estimated by the evaluator: first calls at a new graph shape minus a steady call), peak
RSS and the mIoUs (every strategy's must equal the static one's, and agree with the reference's).
With ResNet-101, 20 images and 2 rounds it takes 10-15 minutes on 2 CPU cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import train_speed  # bench/train_speed.py: the shared --torch-isa option (stdlib only at import)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
VOC_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (500, 500)]  # (h, w), the most common VOC sizes
STRATEGY_CHOICES = ("static", "pynative", "auto")  # ms_semiseg.eval.predictor.STRATEGIES (not imported: no MindSpore)


def many_sizes():
    """60 (h, w) in 30 distinct sizes, as VOC val's long tail: the 5 common sizes x 6 images, 5 more x 2, 20 x 1."""
    rare = [(short, 500) if index % 2 else (500, short) for index, short in enumerate(range(282, 500, 8))]
    rare = [size for size in rare if size not in VOC_SIZES][:25]
    return [size for size in VOC_SIZES for _ in range(6)] + [size for size in rare[:5] for _ in range(2)] + rare[5:]


MIXES = {"5": lambda: list(VOC_SIZES), "many": many_sizes}
DEFAULT_IMAGES = {"5": 20, "many": 60}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment config (default: VOC 92, ResNet-101)")
    parser.add_argument("--mix", choices=sorted(MIXES), default="5",
                        help="image sizes: 5 common VOC sizes cycled, or `many` (VOC's long tail, 30 sizes)")
    parser.add_argument("--images", type=int, default=None,
                        help="number of images (default: 20 for --mix 5, 60 for --mix many)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every image size (quick runs: 0.5)")
    parser.add_argument("--arch", default=None, help="encoder override for both sides, e.g. resnet18")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks (default 2)")
    parser.add_argument("--strategy", nargs="+", choices=STRATEGY_CHOICES, default=["static"],
                        help="our compile strategies, each run in turn (see ms_semiseg.eval.predictor)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side in ABBA order, averaged, so load changes on a shared machine hit both "
                             "sides alike (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    train_speed.add_torch_isa_argument(parser)
    parser.add_argument("--workdir", default=None, help="keep data, weights and results here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.images = DEFAULT_IMAGES[args.mix] if args.images is None else args.images
    if args.images < 1 or not args.scale > 0:
        parser.error(f"--images {args.images} --scale {args.scale}: expected a positive count and scale")
    args.opts = [f"net.encoder.type={args.arch}"] if args.arch else []
    return args


def run_measured(command, env):
    """Runs a command; returns (wall seconds, peak RSS in MiB of that process alone). Fails loudly on an error."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.stderr.write(output.decode(errors="replace")[-4000:])
        raise SystemExit(f"command failed ({process.returncode}): {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024.0


def image_sizes(mix, count, scale):
    sizes = MIXES[mix]()
    return [tuple(max(1, round(side * scale)) for side in sizes[index % len(sizes)]) for index in range(count)]


def make_images(folder, sizes, seed):
    sys.path.insert(0, REPO_ROOT)
    from tests.fixtures import make_voc_fixture
    return make_voc_fixture(folder, [(f"bench_{index:04d}", size) for index, size in enumerate(sizes)], seed=seed)


def make_weights(args, folder):
    pth, ckpt = os.path.join(folder, "random.pth"), os.path.join(folder, "random.ckpt")
    python, env = sys.executable, train_speed.side_env(args, torch_side=False)
    opts = ["--opts", *args.opts] if args.opts else []
    run_measured([python, "-m", "convert", "random", "--config", args.config, "--out", pth, "--seed", str(args.seed)]
                 + opts, env)
    run_measured([python, "-m", "convert", "pth2ckpt", "--config", args.config, "--pth", pth, "--out", ckpt] + opts,
                 env)
    return pth, ckpt


def run_ours(args, data, ckpt, folder, strategy):
    metrics = os.path.join(folder, f"ours_{strategy}.json")
    command = [sys.executable, "-m", "ms_semiseg", "eval", "--config", args.config, "--ckpt", ckpt,
               "--data-root", data["root"], "--opts", f"dataset.val.data_list={data['lists']['val']}", *args.opts,
               "--device", "CPU", "--threads", str(args.threads), "--strategy", strategy,
               "--metrics", metrics, "--no-progress"]
    wall, rss = run_measured(command, train_speed.side_env(args, torch_side=False))
    with open(metrics, encoding="utf-8") as handle:
        result = json.load(handle)
    return dict(elapsed=result["elapsed_s"], wall=wall, rss=rss, miou=result["miou"], miou_proto=result["miou_proto"],
                compiles=result["compiles"], compile_s=result["compile_s_est"], pynative=result["pynative_calls"])


def run_reference(args, data, pth, folder):
    output = os.path.join(folder, "reference.json")
    command = [sys.executable, "-m", "ms_semiseg.eval.reference", "--config", args.config, "--pth", pth,
               "--data-root", data["root"], "--opts", f"dataset.val.data_list={data['lists']['val']}", *args.opts,
               "--protocol", "whole", "--threads", str(args.threads), "--json", output]
    # importing ms_semiseg caps oneDNN at AVX2 for MindSpore; PyTorch keeps its default ISA unless --torch-isa
    wall, rss = run_measured(command, train_speed.side_env(args, torch_side=True))
    with open(output, encoding="utf-8") as handle:
        result = json.load(handle)
    return dict(elapsed=result["elapsed_s"], wall=wall, rss=rss, miou=result["miou"], miou_proto=result["miou_proto"])


def average(results):
    """Mean times, max peak RSS; mIoUs must not change between runs."""
    assert len({(r["miou"], r["miou_proto"]) for r in results}) == 1, results
    mean = {key: sum(r[key] for r in results) / len(results) for key in ("elapsed", "wall", "compile_s")
            if key in results[0]}
    return dict(results[0], **mean, rss=max(r["rss"] for r in results))


def describe_sizes(sizes):
    distinct = sorted(set(sizes), key=sizes.index)
    if len(distinct) <= 5:
        return f"{len(distinct)} sizes {distinct}"
    return f"{len(distinct)} sizes (h x w {min(sizes)}..{max(sizes)})"


def report(args, sizes, ours, reference):
    count = len(sizes)

    def rate(result, key):
        return count / result[key]
    print(f"\n{count} images, {describe_sizes(sizes)}, {args.threads} threads, {args.rounds} round(s), config "
          f"{os.path.relpath(args.config, REPO_ROOT)}{', encoder ' + args.arch if args.arch else ''}, oneDNN ISA: "
          f"MindSpore AVX2, PyTorch {args.torch_isa}")
    print(f"{'pipeline':<30} {'images/s':>9} {'eval s':>8} {'process s':>10} {'compiles':>9} {'compile s':>10} "
          f"{'peak RSS MiB':>13} {'mIoU':>7} {'proto':>7}")
    rows = [(f"MindSpore (ours, {strategy})", result) for strategy, result in ours.items()]
    for name, result in rows + [("PyTorch eager (ref)", reference)]:
        proto = "n/a" if result["miou_proto"] is None else f"{result['miou_proto']:.2f}"
        compiles = "" if "compiles" not in result else f"{result['compiles']:>9d} {result['compile_s']:>10.1f}"
        print(f"{name:<30} {rate(result, 'elapsed'):>9.4f} {result['elapsed']:>8.1f} {result['wall']:>10.1f} "
              f"{compiles:>20} {result['rss']:>13.0f} {result['miou']:>7.2f} {proto:>7}")
    for strategy, result in ours.items():
        print(f"{strategy}: MindSpore / PyTorch images/s {rate(result, 'elapsed') / rate(reference, 'elapsed'):.2f}x "
              f"(evaluation incl. model load and compiles), {reference['wall'] / result['wall']:.2f}x (whole "
              f"processes); compile share {100 * result['compile_s'] / result['elapsed']:.0f}% of the evaluation; "
              f"peak RSS {result['rss'] / reference['rss']:.2f}x PyTorch's ({reference['rss']:.0f} MiB)")
    print(f"load average now {os.getloadavg()[0]:.1f}")


def check_same_results(ours):
    """Every strategy computes the same logits: their mIoUs must be equal, not close."""
    results = {(r["miou"], r["miou_proto"]) for r in ours.values()}
    if len(results) != 1:
        raise SystemExit(f"strategies disagree: {ours}")


def main(argv=None):
    args = parse_args(argv)
    args.config = os.path.abspath(args.config)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as folder:  # images, weights, results: removed after
        return run(args, folder)


def run(args, folder):
    print(f"work dir {folder}; load average {os.getloadavg()[0]:.1f}", flush=True)
    sizes = image_sizes(args.mix, args.images, args.scale)
    data = make_images(os.path.join(folder, "voc"), sizes, args.seed)
    pth, ckpt = make_weights(args, folder)
    sides = {f"ours {strategy}": (lambda strategy=strategy: run_ours(args, data, ckpt, folder, strategy))
             for strategy in args.strategy}
    sides["reference"] = lambda: run_reference(args, data, pth, folder)
    runs = {name: [] for name in sides}
    for round_index in range(args.rounds):
        for name in (list(sides) if round_index % 2 == 0 else list(sides)[::-1]):
            runs[name].append(sides[name]())
            result = runs[name][-1]
            print(f"round {round_index + 1} {name}: {result['elapsed']:.1f} s, peak RSS {result['rss']:.0f} MiB, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ours = {strategy: average(runs[f"ours {strategy}"]) for strategy in args.strategy}
    report(args, sizes, ours, average(runs["reference"]))
    check_same_results(ours)


if __name__ == "__main__":
    main()
