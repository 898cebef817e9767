"""How much the stem max-pool form moves the logits: PyTorch's `padding=1, ceil_mode=True` vs the original PCR
MindSpore release's `pad_mode="same"` (net.encoder.kwargs.stem_pool), same weights, same input.

    python bench/stem_pool.py [--config CFG] [--ckpt CKPT] [--height 375] [--width 500] [--seed 0]

Without --ckpt: random weights with calibrated BN statistics (`python -m convert random --seed 0`, converted with
`python -m convert pth2ckpt`). The input is standard normal (the normalised image space). Both heads are upsampled to
the input size as `eval` does, then compared: max and mean |diff|, and the % of pixels whose argmax differs.
Random weights give small class margins, so they flip more pixels than a trained model would. ResNet-101 at
500x375: about 1 minute on 2 CPU cores.
"""
import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")


def random_checkpoint(config, folder):
    pth, ckpt = os.path.join(folder, "random.pth"), os.path.join(folder, "random.ckpt")
    for argv in (["random", "--config", config, "--out", pth, "--seed", "0"],
                 ["pth2ckpt", "--config", config, "--pth", pth, "--out", ckpt]):
        subprocess.run([sys.executable, "-m", "convert", *argv], cwd=REPO_ROOT, check=True)
    return ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--ckpt", default=None, help="default: random weights")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="input seed")
    args = parser.parse_args(argv)

    from ms_semiseg.config import load_config, net_config
    from ms_semiseg.eval.predictor import Predictor, prepare_device
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model, read_checkpoint
    prepare_device("CPU")
    with tempfile.TemporaryDirectory() as folder:
        ckpt = args.ckpt or random_checkpoint(args.config, folder)
        params = read_checkpoint(ckpt)  # once: two reads of a ResNet-101 file need twice the memory
    x = np.random.default_rng(args.seed).standard_normal((1, 3, args.height, args.width)).astype(np.float32)
    outputs = {}
    for pool in ("pytorch", "same"):
        cfg = load_config(args.config, [f"net.encoder.kwargs.stem_pool={pool}"])
        start = time.perf_counter()
        model = load_into_model(create_model(net_config(cfg)), ckpt, params, say=lambda line: None)
        outputs[pool] = Predictor(model, "pynative")(x)
        del model
        gc.collect()
        print(f"{pool}: forward {time.perf_counter() - start:.1f} s", flush=True)
    for head in outputs["pytorch"]:
        a, b = outputs["pytorch"][head][0], outputs["same"][head][0]
        diff = np.abs(a - b)
        print(f"{head}: max_abs_diff={diff.max():.4g} mean_abs_diff={diff.mean():.4g} "
              f"logit_scale={np.abs(a).max():.4g} argmax_differs={100 * (a.argmax(0) != b.argmax(0)).mean():.2f}%")


if __name__ == "__main__":
    main()
