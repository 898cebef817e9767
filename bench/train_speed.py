"""Training speed: our compiled MindSpore train step vs a PyTorch train step of the same model and batch.

Each side runs in its own subprocess with the same thread count, random weights and inputs: forward, loss, backward
and SGD (momentum 0.9, weight decay, encoder/decoder groups), cross-entropy on both sides. MindSpore runs
`SupervisedStep` of the student (one graph, host dropout masks loaded every step as in training); PyTorch runs
`convert/torch_model.py` in eager mode. Printed: steps/s of each side, the ratio MindSpore/PyTorch (> 1 means
MindSpore is faster), first-step time (compilation on the MindSpore side) and peak RSS.

`--semi` also times the trainer's own iterations, in a third process: `Trainer.supervised_iteration` and
`Trainer.semi_iteration` of ms_semiseg/train/trainer.py (the config's criterion, PCR's patch granularity and
prototype update, the teacher's pseudo-labels, CutMix, EMA, the host work of each iteration), called in turn
(sup, semi, sup, semi, ...) so that load from other jobs hits both alike, and prints their ratio (min and median
of the per-iteration times; MindSpore only, there is no PyTorch counterpart here). The supervised iteration is the
one of a semi-supervised run's warm-up: the teacher also runs forward on the labeled batch, as in U2PL.

    python bench/train_speed.py [--arch resnet50] [--crop 129] [--batch 2] [--steps 5] [--threads 2] [--semi]
    python bench/train_speed.py --config experiments/demo/ours/config.yaml --arch resnet18 --crop 80 --batch 5 --semi
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


def timed(step, steps, warmup, rss_marks):
    """(first step seconds, mean seconds of `steps` steps after `warmup` more); appends the peak RSS after the first
    step and after all of them to `rss_marks`."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    rss_marks.append(peak_rss_mb())
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rss_marks.append(peak_rss_mb())
    return first, (time.perf_counter() - start) / steps


# Peak RSS after each stage of a side's process (ru_maxrss only grows, so each step up is that stage's own cost).
RSS_STAGES = ("python and numpy", "framework imported", "model, optimizer and step built",
              "first step (MindSpore: graph compile + run)", "warm-up and timed steps")


def built_with_stages(import_framework, build, args):
    """(what `build(args)` returns, [peak RSS after numpy, after the framework's import, after the build])."""
    import numpy  # noqa: F401  (both sides need it: counted in the first stage, not the framework's)
    marks = [peak_rss_mb()]
    import_framework()
    marks.append(peak_rss_mb())
    step = build(args)
    marks.append(peak_rss_mb())
    return step, marks


def timed_with_stages(import_framework, build, args):
    """`timed` of the step `build(args)` returns, with the peak RSS of every stage in RSS_STAGES."""
    step, marks = built_with_stages(import_framework, build, args)
    first, mean = timed(step, args.steps, args.warmup, marks)
    return {"first_step_s": first, "step_s": mean, "rss_stages_mb": marks}


def build_mindspore(args):
    """Sets the MindSpore context and returns {"sup": closure}: one supervised step of the student alone (no
    teacher: the PyTorch side has none), host dropout masks loaded every step; it waits for its result."""
    import numpy as np
    from ms_semiseg.losses import build_criterion
    from ms_semiseg.models import create_model
    from ms_semiseg.engine import masks, optim, steps
    set_mindspore_context(args)
    cfg, net = net_config(args)
    ms = _mindspore()
    ms.set_seed(0)
    student = create_model(net)
    cells = masks.install_host_dropout(student, args.batch)
    pair = steps.MeanTeacherPair(student)
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

    return {"sup": sup_step}


def _mindspore():
    import mindspore
    import ms_semiseg  # noqa: F401  (sets the oneDNN ISA cap before the first kernel)
    return mindspore


def set_mindspore_context(args):
    ms = _mindspore()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=args.threads)


def trainer_config(args, folder):
    """The config as `python -m ms_semiseg train` reads it, with this bench's encoder, crop and batch, split lists
    of placeholder rows in `folder` (the plan counts rows; no image is read), no validation, and enough epochs that
    the poly LR schedule (inside the optimizer graph) does not run out during the bench."""
    from ms_semiseg.config import load_config
    lists = {}
    for name, rows in (("labeled", 2 * args.batch), ("unlabeled", 2 * args.batch)):
        lists[name] = os.path.join(folder, f"{name}.txt")
        with open(lists[name], "w", encoding="utf-8") as handle:
            handle.writelines(f"{name}/{index}.jpg {name}/{index}.png\n" for index in range(rows))
    opts = [f"dataset.train.data_list={lists['labeled']}", f"dataset.train.unlabeled_list={lists['unlabeled']}",
            "trainer.eval_on=False", "trainer.epochs=5000", f"dataset.batch_size={args.batch}",
            f"net.encoder.type={args.arch}"]
    cfg = load_config(args.config, opts)
    cfg["dataset"]["train"]["crop"]["size"] = [args.crop, args.crop]
    return cfg


def build_trainer(args):
    """{"sup": closure, "semi": closure}: `Trainer.supervised_iteration` and `Trainer.semi_iteration` of the real
    trainer (ms_semiseg/train/trainer.py) on one random batch: the config's criterion, method (PCR's patch
    granularity, prototype update), EMA and host work per iteration (dropout masks, CutMix boxes, patch pixels),
    with the teacher that a semi-supervised run has (its warm-up steps also refresh the teacher's BatchNorm)."""
    import atexit
    import shutil
    import tempfile
    from ms_semiseg.train.plan import plan_from_config
    from ms_semiseg.train.records import RunFiles
    from ms_semiseg.train.trainer import Trainer
    set_mindspore_context(args)
    folder = tempfile.mkdtemp(prefix="train_speed_")
    atexit.register(shutil.rmtree, folder, True)  # the trainer's run folder lives as long as the timed closures
    cfg = trainer_config(args, folder)
    plan = plan_from_config(cfg)
    if not plan.semi:
        raise SystemExit(f"--semi: {args.config} trains no mean teacher (trainer.unsupervised, sup_only_epoch)")
    files = RunFiles.from_config(cfg, os.path.join(folder, "run"))
    os.makedirs(files.checkpoint_dir)
    trainer = Trainer(plan, files, 0)
    images, labels = batch(args, int(cfg["net"]["num_classes"]))
    data = {"image_l": images, "label_l": labels, "image_u": images[::-1].copy()}
    semi_epoch = plan.sup_only_epoch
    counter = iter(range(10 ** 9))
    return {"sup": lambda: trainer.supervised_iteration(data, 0, next(counter) % plan.iterations).asnumpy(),
            "semi": lambda: trainer.semi_iteration(data, semi_epoch, next(counter) % plan.iterations).asnumpy()}


def interleaved(steps, count, warmup):
    """{name: [seconds per call]}: after 1 + warmup untimed calls each (compiles), the steps called in turn `count`
    times (A B A B ...), so that load from other processes hits them alike."""
    for step in steps.values():
        for _ in range(1 + warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(count):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def run_mindspore(args):
    return timed_with_stages(_mindspore, lambda a: build_mindspore(a)["sup"], args)


def run_trainer(args):
    import statistics
    times = interleaved(build_trainer(args), args.steps, args.warmup)
    return {f"{name}_{stat.__name__}_s": stat(values) for name, values in times.items()
            for stat in (min, statistics.median)}


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
    return timed_with_stages(lambda: __import__("torch"), build_torch, args)


def rss_stage_table(ms_marks, torch_marks, stages=RSS_STAGES):
    """Markdown rows: each stage's peak RSS on both sides and what the stage added."""
    rows = ["| stage | MindSpore peak RSS MiB (+ stage) | PyTorch peak RSS MiB (+ stage) | ratio |",
            "| --- | ---: | ---: | ---: |"]
    for index, stage in enumerate(stages):
        added = [marks[index] - (marks[index - 1] if index else 0.0) for marks in (ms_marks, torch_marks)]
        rows.append(f"| {stage} | {ms_marks[index]:.0f} (+{added[0]:.0f}) | {torch_marks[index]:.0f} "
                    f"(+{added[1]:.0f}) | {ms_marks[index] / torch_marks[index]:.2f}x |")
    return rows


def child(args):
    result = {"mindspore": run_mindspore, "trainer": run_trainer, "torch": run_torch}[args.side](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


TORCH_ISAS = ("ALL", "AVX512_CORE", "AVX2")


def add_torch_isa_argument(parser):
    """`--torch-isa`: oneDNN's ISA for the PyTorch side (the benches share it). `import ms_semiseg` caps MindSpore's
    oneDNN at AVX2 (its AVX-512 fp32 NCHW convolutions run a reference kernel, docs/performance.md); PyTorch keeps
    its own default unless asked, so `--torch-isa AVX2` compares the two frameworks on the same kernels."""
    parser.add_argument("--torch-isa", choices=TORCH_ISAS, default="ALL",
                        help="ONEDNN_MAX_CPU_ISA of the PyTorch side: ALL (its default) or AVX2 (MindSpore's cap)")


def side_env(args, torch_side):
    """The environment of one side's process: its thread count, quiet logs, the repo importable, and on the PyTorch
    side the `--torch-isa` (the MindSpore side gets its AVX2 cap from `import ms_semiseg`)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), GLOG_v="3",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if torch_side:
        env["ONEDNN_MAX_CPU_ISA"] = args.torch_isa
    return env


def spawn(args, side):
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--config", args.config, "--arch", args.arch,
               "--crop", str(args.crop), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(command, env=side_env(args, side == "torch"), capture_output=True, text=True)
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
    add_torch_isa_argument(parser)
    parser.add_argument("--side", choices=("mindspore", "trainer", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    print(f"{args.arch}, batch {args.batch} x 3 x {args.crop} x {args.crop}, {args.threads} threads, "
          f"{args.steps} timed steps after {1 + args.warmup} untimed, oneDNN ISA: MindSpore AVX2, PyTorch "
          f"{args.torch_isa}")
    results = {side: spawn(args, side) for side in ("mindspore", "torch")}
    for side, res in results.items():
        print(f"{side:9s}: {1 / res['step_s']:.3f} steps/s ({res['step_s']:.2f} s/step), first step "
              f"{res['first_step_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MiB")
    ratio = results["torch"]["step_s"] / results["mindspore"]["step_s"]
    print(f"speed ratio MindSpore/PyTorch: {ratio:.2f}x")
    print("\npeak RSS by stage (each side in its own process):\n")
    print("\n".join(rss_stage_table(results["mindspore"]["rss_stages_mb"], results["torch"]["rss_stages_mb"])))
    if args.semi:
        report_trainer(spawn(args, "trainer"), args.steps)


def report_trainer(res, count):
    print(f"trainer iterations (Trainer.supervised_iteration / semi_iteration, interleaved, {count} each), "
          f"peak RSS {res['peak_rss_mb']:.0f} MiB:")
    for name in ("sup", "semi"):
        print(f"  {name:4s}: min {res[name + '_min_s']:.3f} s, median {res[name + '_median_s']:.3f} s")
    print(f"semi-supervised iteration / supervised iteration: {res['semi_min_s'] / res['sup_min_s']:.2f}x (min), "
          f"{res['semi_median_s'] / res['sup_median_s']:.2f}x (median)")


if __name__ == "__main__":
    main()
