"""Training speed: our compiled MindSpore train step vs a PyTorch train step of the same model and batch.

Each side runs in its own subprocess with the same thread count, random weights and inputs: forward, loss, backward
and SGD (momentum 0.9, weight decay, encoder/decoder groups). MindSpore runs `SupervisedStep` (one graph, host
dropout masks loaded every step as in training); PyTorch runs `convert/torch_model.py` in eager mode. Printed:
steps/s of each side, the ratio MindSpore/PyTorch (> 1 means MindSpore is faster), first-step time (compilation on
the MindSpore side) and peak RSS. `--semi` also times our full semi-supervised iteration (teacher pseudo-labels +
the semi step; MindSpore only, there is no PyTorch counterpart here).

    python bench/train_speed.py [--arch resnet50] [--crop 129] [--batch 2] [--steps 5] [--threads 2] [--semi]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def net_config(args):
    from ms_semiseg.config import load_config
    from ms_semiseg.config import net_config as read_net
    cfg = load_config(args.config)
    net = read_net(cfg)
    net["encoder"]["type"] = args.arch
    return cfg, net


def batch(args, num_classes):
    import numpy as np
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, args.crop, args.crop)).astype(np.float32)
    labels = rng.integers(0, num_classes, (args.batch, args.crop, args.crop)).astype(np.int32)
    return images, labels


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timed(step, steps, warmup):
    """(first step seconds, mean seconds of `steps` steps after `warmup` more)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - start) / steps


def build_mindspore(args):
    """Sets the MindSpore context and builds the steps: {"sup": supervised step closure, "semi": semi-supervised
    iteration closure (only with args.semi)}. Each closure runs one whole step and waits for its result."""
    import mindspore as ms
    import numpy as np
    import ms_semiseg  # noqa: F401  (sets the oneDNN ISA cap before the first kernel)
    from ms_semiseg.losses import build_criterion
    from ms_semiseg.models import create_model
    from ms_semiseg.engine import masks, optim, steps
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=args.threads)
    cfg, net = net_config(args)
    ms.set_seed(0)
    student = create_model(net)
    cells = masks.install_host_dropout(student, 2 * args.batch)
    teacher = create_model(net) if args.semi else None
    teacher_cells = masks.install_host_dropout(teacher, 2 * args.batch) if teacher else []
    pair = steps.MeanTeacherPair(student, teacher)
    total = 1000
    optimizer = optim.build_sgd(pair.student.trainable_params(), 0.001, total, 0.9, 1e-4, 0.9, 10, "student.")
    settings = steps.LossSettings(aux_weight=0.4)
    criterion = build_criterion({"type": "CELoss"})
    sup = steps.SupervisedStep(pair, optimizer, criterion, settings)
    images, labels = batch(args, net["num_classes"])
    image, label = ms.Tensor(images), ms.Tensor(labels)
    rng = np.random.default_rng(1)

    def sup_step():
        masks.load_dropout_masks(cells, masks.dropout_keep_masks(rng, cells))
        sup.run(image, label).asnumpy()

    built = {"sup": sup_step}
    if args.semi:
        built["semi"] = _semi_step(args, pair, optimizer, criterion, settings, cells, teacher_cells, image, label)
    return built


def run_mindspore(args):
    built = build_mindspore(args)
    result = dict(zip(("first_step_s", "step_s"), timed(built["sup"], args.steps, args.warmup)))
    if args.semi:
        first, step = timed(built["semi"], args.steps, args.warmup)
        result.update({"semi_first_step_s": first, "semi_step_s": step})
    return result


def _semi_step(args, pair, optimizer, criterion, settings, cells, teacher_cells, image, label):
    import mindspore as ms
    import numpy as np
    from ms_semiseg.engine import ema, masks, steps
    from ms_semiseg.methods.mean_teacher import MeanTeacherStep, TeacherPseudoLabels
    from ms_semiseg.methods.pcr.step import PCRStep
    step_class = PCRStep if pair.student.use_proto else MeanTeacherStep
    semi = step_class(pair, optimizer, criterion, settings,
                      ema.EMAUpdate(*ema.ema_parameter_pairs(pair.student, pair.teacher)))
    pseudo = TeacherPseudoLabels(pair.teacher)
    rng = np.random.default_rng(2)
    grid = int((pair.student.use_proto and 32) or 1)

    def semi_step():
        masks.load_dropout_masks(cells, masks.dropout_keep_masks(rng, cells))
        masks.load_dropout_masks(teacher_cells, masks.dropout_keep_masks(rng, teacher_cells))
        labels_u, conf = pseudo.run(image)
        boxes = masks.cutmix_boxes(rng, args.batch, args.crop, args.crop)
        coords = masks.patch_select_coords(rng, args.crop, min(grid, args.crop))
        extra = ms.mutable((ms.Tensor(coords),)) if pair.student.use_proto else ()
        semi.run(image, label, image, labels_u, conf, ms.Tensor(boxes), steps.scalar(80.0), steps.scalar(0.99),
                 *((extra,) if extra else ())).asnumpy()

    return semi_step


def build_torch(args):
    """The PyTorch eager train step closure (forward, loss, backward, SGD), threads set."""
    import torch
    import torch.nn.functional as F
    from convert.torch_model import TorchModelBuilder
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _, net = net_config(args)
    model = TorchModelBuilder(net).train()
    groups = [{"params": [p for n, p in model.named_parameters() if n.startswith("encoder.")], "lr": 0.001},
              {"params": [p for n, p in model.named_parameters()
                          if not n.startswith("encoder.") and p.requires_grad], "lr": 0.01}]
    optimizer = torch.optim.SGD(groups, lr=0.001, momentum=0.9, weight_decay=1e-4)
    images, labels = batch(args, net["num_classes"])
    image, label = torch.from_numpy(images), torch.from_numpy(labels).long()

    def step():
        outs = model(image)
        pred = F.interpolate(outs["pred"], size=image.shape[2:], mode="bilinear", align_corners=True)
        loss = F.cross_entropy(pred, label, ignore_index=255)
        if "aux" in outs:
            aux = F.interpolate(outs["aux"], size=image.shape[2:], mode="bilinear", align_corners=True)
            loss = loss + 0.4 * F.cross_entropy(aux, label, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def run_torch(args):
    return dict(zip(("first_step_s", "step_s"), timed(build_torch(args), args.steps, args.warmup)))


def child(args):
    result = run_mindspore(args) if args.side == "mindspore" else run_torch(args)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def spawn(args, side):
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--config", args.config, "--arch", args.arch,
               "--crop", str(args.crop), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads)] + (["--semi"] if args.semi else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), GLOG_v="3",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if side == "torch":  # importing ms_semiseg caps oneDNN at AVX2 for MindSpore; PyTorch keeps its default
        env["ONEDNN_MAX_CPU_ISA"] = "ALL"
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{side} side failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config whose net section is used")
    parser.add_argument("--arch", default="resnet50", help="encoder (resnet18/34/50/101/152)")
    parser.add_argument("--crop", type=int, default=129)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--semi", action="store_true", help="also time our semi-supervised iteration")
    parser.add_argument("--side", choices=("mindspore", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    print(f"{args.arch}, batch {args.batch} x 3 x {args.crop} x {args.crop}, {args.threads} threads, "
          f"{args.steps} timed steps after {1 + args.warmup} untimed")
    results = {side: spawn(args, side) for side in ("mindspore", "torch")}
    for side, res in results.items():
        print(f"{side:9s}: {1 / res['step_s']:.3f} steps/s ({res['step_s']:.2f} s/step), first step "
              f"{res['first_step_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MiB")
    semi = results["mindspore"].get("semi_step_s")
    if semi:
        print(f"mindspore semi-supervised iteration (teacher pseudo-labels + the semi step): {semi:.2f} s/iteration, "
              f"first {results['mindspore']['semi_first_step_s']:.1f} s")
    ratio = results["torch"]["step_s"] / results["mindspore"]["step_s"]
    print(f"speed ratio MindSpore/PyTorch: {ratio:.2f}x")


if __name__ == "__main__":
    main()
