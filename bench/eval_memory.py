"""Evaluation peak RSS of our predictor under each compile strategy and MindSpore memory option, side by side.

    python bench/eval_memory.py [--arch resnet18] [--size 375x500] [--threads 1] [--variants static pynative ...]

Each variant runs in its own process (peak RSS is per process): random weights of the VOC 92 model (ResNet-101 by
default; --arch resnet18 for a quick run), four forwards at 375x500, 375x500, 500x375, 333x500 (--size sets the
first; the others are its transpose and 333 rows), as an evaluation meets them. Variants:
- static: one graph per size, at most one kept (`Predictor`'s default cache);
- pynative: op by op;
- keep: static with every graph kept (no `ms_memory_recycle`): what a graph per size costs;
- auto-kept: a graph for the first size, then op-by-op forwards while that graph stays compiled;
- auto: the same, the graph released before the op-by-op forwards (what `--strategy auto` does);
- O1: static with `mindspore.runtime.set_memory(optimize_level="O1")` (MindSpore's memory reuse level).
Printed per variant: peak RSS after each forward, time, and a digest of all logits (they must be equal).
"""
import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
VARIANTS = ("static", "pynative", "keep", "auto-kept", "auto", "O1")


def sizes(first):
    height, width = first
    return [(height, width), (height, width), (width, height), (333, width)]


def child(args):
    import numpy as np
    import ms_semiseg  # noqa: F401  (oneDNN ISA cap)
    import mindspore as ms
    from ms_semiseg.config import load_config, net_config
    from ms_semiseg.eval.predictor import Predictor, prepare_device
    from ms_semiseg.models import create_model
    prepare_device("CPU", args.threads)
    if args.side == "O1":
        ms.runtime.set_memory(optimize_level="O1")
    cfg = load_config(CONFIG, [f"net.encoder.type={args.arch}"] if args.arch else [])
    ms.set_seed(0)
    model = create_model(net_config(cfg))
    strategy = {"pynative": "pynative", "auto": "auto", "auto-kept": "auto"}.get(args.side, "static")
    # auto variants: a graph for the first size whatever its pixel count, op by op for the others
    predictor = Predictor(model, strategy, max_cached_shapes=8 if args.side == "keep" else 1, static_pixels=1)
    shapes = sizes(args.size)
    predictor.expect({shapes[0]: 2} if args.side == "auto" else {shapes[0]: 10 ** 6})  # auto-kept: never released
    rng, digest, rss = np.random.default_rng(0), hashlib.sha1(), []
    start = time.perf_counter()
    for height, width in shapes:
        outputs = predictor(rng.standard_normal((1, 3, height, width)).astype(np.float32))
        for head in sorted(outputs):
            digest.update(outputs[head].tobytes())
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    print("RESULT " + json.dumps({"rss": rss, "seconds": time.perf_counter() - start, "digest": digest.hexdigest()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="encoder override, e.g. resnet18 (default: the config's)")
    parser.add_argument("--size", default="375x500", help="first image size HxW (default 375x500)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--side", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        args.size = tuple(int(side) for side in args.size.lower().split("x"))
        assert len(args.size) == 2 and min(args.size) > 0
    except (ValueError, AssertionError):
        parser.error(f"--size {args.size}: expected HxW, e.g. 375x500")
    if args.side:
        return child(args)
    print(f"{args.arch or 'config encoder'}, forwards at {sizes(args.size)}, {args.threads} thread(s)")
    print(f"{'variant':<10} {'peak RSS MiB after each forward':<34} {'seconds':>8}  logits")
    digests = set()
    for variant in args.variants:
        command = [sys.executable, os.path.abspath(__file__), "--side", variant, "--threads", str(args.threads),
                   "--size", "x".join(map(str, args.size))] + (["--arch", args.arch] if args.arch else [])
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), GLOG_v="3",
                   PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"{variant} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        digests.add(result["digest"])
        print(f"{variant:<10} {' '.join(f'{value:.0f}' for value in result['rss']):<34} {result['seconds']:>8.1f}  "
              f"{result['digest'][:12]}", flush=True)
    print("logits: " + ("identical in every variant" if len(digests) == 1 else "DIFFER between variants"))
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
