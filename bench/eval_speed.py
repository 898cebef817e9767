"""Evaluation speed: our MindSpore pipeline vs the PyTorch reference pipeline on the same mixed-size images.

    python bench/eval_speed.py [--config CFG] [--images 20] [--threads 2] [--strategy static|pynative]

Builds a VOC-layout set of random images in VOC sizes (5 distinct sizes, cycled), random weights
(`python -m convert random`, converted with `python -m convert pth2ckpt`), then runs, each in its own process
so peak RSS is measured separately, with the same thread count (torch.set_num_threads / MindSpore threads_num,
OMP_NUM_THREADS) and each framework's own oneDNN ISA (AVX2 for MindSpore, see ms_semiseg/__init__.py):
- ours: `python -m ms_semiseg eval` (whole-image protocol, both heads, default compile strategy);
- reference: `python -m ms_semiseg.eval.reference` (PyTorch eager, U2PL's eval loop).
Each side runs --rounds times in ABBA order (ours, ref, ref, ours, ...) and the times are averaged, so that load
from other processes on a shared machine hits both sides alike. Prints images/s for each (the whole evaluation,
model loading and compiles included, and the whole process), their ratio, peak RSS and both mIoUs (which must
agree). With ResNet-101, 20 images and 2 rounds it takes 10-15 minutes on 2 CPU cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
VOC_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (500, 500)]  # (h, w), the most common VOC sizes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment config (default: VOC 92, ResNet-101)")
    parser.add_argument("--images", type=int, default=20, help="number of images (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks (default 2)")
    parser.add_argument("--strategy", default="static", help="our compile strategy (see ms_semiseg.eval.predictor)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side in ABBA order, averaged, so load changes on a shared machine hit both "
                             "sides alike (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep data, weights and results here (default: a temp dir)")
    return parser.parse_args(argv)


def child_env(threads, **overrides):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **overrides)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_v", "3")
    return env


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


def make_images(folder, count, seed):
    sys.path.insert(0, REPO_ROOT)
    from tests.fixtures import make_voc_fixture
    sizes = [(f"bench_{index:04d}", VOC_SIZES[index % len(VOC_SIZES)]) for index in range(count)]
    return make_voc_fixture(folder, sizes, seed=seed)


def make_weights(args, folder):
    pth, ckpt = os.path.join(folder, "random.pth"), os.path.join(folder, "random.ckpt")
    python, env = sys.executable, child_env(args.threads)
    run_measured([python, "-m", "convert", "random", "--config", args.config, "--out", pth, "--seed", str(args.seed)],
                 env)
    run_measured([python, "-m", "convert", "pth2ckpt", "--config", args.config, "--pth", pth, "--out", ckpt], env)
    return pth, ckpt


def run_ours(args, data, ckpt, folder):
    metrics = os.path.join(folder, "ours.json")
    command = [sys.executable, "-m", "ms_semiseg", "eval", "--config", args.config, "--ckpt", ckpt,
               "--data-root", data["root"], "--opts", f"dataset.val.data_list={data['lists']['val']}",
               "--device", "CPU", "--threads", str(args.threads), "--strategy", args.strategy,
               "--metrics", metrics, "--no-progress"]
    wall, rss = run_measured(command, child_env(args.threads))
    with open(metrics, encoding="utf-8") as handle:
        result = json.load(handle)
    return dict(elapsed=result["elapsed_s"], wall=wall, rss=rss, miou=result["miou"], miou_proto=result["miou_proto"])


def run_reference(args, data, pth, folder):
    output = os.path.join(folder, "reference.json")
    command = [sys.executable, "-m", "ms_semiseg.eval.reference", "--config", args.config, "--pth", pth,
               "--data-root", data["root"], "--opts", f"dataset.val.data_list={data['lists']['val']}",
               "--protocol", "whole", "--threads", str(args.threads), "--json", output]
    # importing ms_semiseg caps oneDNN at AVX2 for MindSpore; PyTorch keeps its default ISA
    wall, rss = run_measured(command, child_env(args.threads, ONEDNN_MAX_CPU_ISA="ALL"))
    with open(output, encoding="utf-8") as handle:
        result = json.load(handle)
    return dict(elapsed=result["elapsed_s"], wall=wall, rss=rss, miou=result["miou"], miou_proto=result["miou_proto"])


def average(results):
    """Mean times, max peak RSS; mIoUs must not change between runs."""
    assert len({(r["miou"], r["miou_proto"]) for r in results}) == 1, results
    return dict(results[0], elapsed=sum(r["elapsed"] for r in results) / len(results),
                wall=sum(r["wall"] for r in results) / len(results), rss=max(r["rss"] for r in results))


def report(args, count, ours, reference):
    def rate(result, key):
        return count / result[key]
    print(f"\n{count} images, {len(VOC_SIZES)} sizes {VOC_SIZES}, {args.threads} threads, {args.rounds} round(s), "
          f"config {os.path.relpath(args.config, REPO_ROOT)}, our strategy {args.strategy}")
    print(f"{'pipeline':<22} {'images/s':>9} {'eval s':>8} {'process s':>10} {'peak RSS MiB':>13} {'mIoU':>7} "
          f"{'proto':>7}")
    for name, result in (("MindSpore (ours)", ours), ("PyTorch eager (ref)", reference)):
        proto = "n/a" if result["miou_proto"] is None else f"{result['miou_proto']:.2f}"
        print(f"{name:<22} {rate(result, 'elapsed'):>9.4f} {result['elapsed']:>8.1f} {result['wall']:>10.1f} "
              f"{result['rss']:>13.0f} {result['miou']:>7.2f} {proto:>7}")
    print(f"ratio MindSpore / PyTorch images/s: {rate(ours, 'elapsed') / rate(reference, 'elapsed'):.2f}x "
          f"(evaluation incl. model load and compiles), {reference['wall'] / ours['wall']:.2f}x (whole processes)")
    print(f"peak RSS: MindSpore {ours['rss']:.0f} MiB, PyTorch {reference['rss']:.0f} MiB; "
          f"load average now {os.getloadavg()[0]:.1f}")


def main(argv=None):
    args = parse_args(argv)
    args.config = os.path.abspath(args.config)
    folder = args.workdir or tempfile.mkdtemp(prefix="eval_speed_")
    os.makedirs(folder, exist_ok=True)
    print(f"work dir {folder}; load average {os.getloadavg()[0]:.1f}", flush=True)
    data = make_images(os.path.join(folder, "voc"), args.images, args.seed)
    pth, ckpt = make_weights(args, folder)
    sides = {"ours": lambda: run_ours(args, data, ckpt, folder),
             "reference": lambda: run_reference(args, data, pth, folder)}
    runs = {name: [] for name in sides}
    for round_index in range(args.rounds):
        for name in (("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")):
            runs[name].append(sides[name]())
            result = runs[name][-1]
            print(f"round {round_index + 1} {name}: {result['elapsed']:.1f} s, peak RSS {result['rss']:.0f} MiB, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    report(args, args.images, average(runs["ours"]), average(runs["reference"]))


if __name__ == "__main__":
    main()
