"""`python -m ms_semiseg.demo.pretrain`: makes the demo's pretrained backbone, ckpt/demo/resnet18_source.ckpt.

PCR and U2PL start from an ImageNet backbone; the demo cannot download one, and from random weights its teacher is
too weak at the start of the semi-supervised phase for the unlabeled images to help (docs/demo.md). So the project
makes its own "ImageNet": a separate synthetic *source task* (`make_data --task source`: 8 abstract shapes in any
colour and texture, disjoint from the demo's tree/house/car/fish, every one of its 1800 train images labeled) on
which the demo's network (ResNet-18 deep stem DeepLabv3+, experiments/demo/source_pretrain/config.yaml) is trained
fully supervised. No demo image or label is used. The encoder's stem..layer3 are kept (layer4, 8.4M of the 11.3M
parameters, would take the file past 20 MB; it starts from random weights in the demo, with a note), written
atomically with a provenance file beside it (command, source-task mIoU, sha256).

Steps: generate data/demo_source (~10 s) -> train (2700 iterations, ~25 min on 2 CPU cores) -> extract. The
checkpoint is committed, so the demo never runs this; it is here so anyone can remake (or change) it.
"""
import argparse
import datetime
import hashlib
import json
import os
import sys

from ..errors import UserError
from .run import repo_path
from .runs import failure_reason, run_logged
from .specs import REPO_ROOT

CONFIG = os.path.join(REPO_ROOT, "experiments", "demo", "source_pretrain", "config.yaml")
DEFAULT_OUT = os.path.join("ckpt", "demo", "resnet18_source.ckpt")
DATA_DIR = os.path.join("data", "demo_source")
WORK_DIR = os.path.join("outputs", "demo", "source_pretrain")
SOURCE_DATA = {"num_images": 2000, "size": 128, "seed": 7, "labeled_fraction": 1 / 16, "num_val": None, "task": "source"}
KEPT_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")  # everything but layer4
MAX_BYTES = 20 * 1024 * 1024  # issue 13: a shipped checkpoint stays under 20 MB


def encoder_subset(params, stages=KEPT_STAGES):
    """{name: value} of the `encoder.<stage>.*` entries (teacher/student prefixes already stripped)."""
    return {name: value for name, value in params.items()
            if name.startswith("encoder.") and name.split(".")[1] in stages}


def extract_backbone(segmentor_ckpt, out_path):
    """Writes the kept encoder stages of a trained segmentor checkpoint to out_path; returns their count."""
    from ..utils.checkpoint import read_checkpoint, save_params_atomic, strip_prefix
    params = strip_prefix(read_checkpoint(segmentor_ckpt), ("module.", "teacher.", "student."))
    kept = encoder_subset(params)
    if not kept:
        raise UserError(f"{segmentor_ckpt}: holds no encoder.* weights, expected a segmentor checkpoint of "
                        f"{CONFIG}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_params_atomic({name: value.asnumpy() for name, value in kept.items()}, out_path)
    size = os.path.getsize(out_path)
    if size > MAX_BYTES:
        raise UserError(f"{out_path}: {size / 2**20:.1f} MB, expected at most {MAX_BYTES / 2**20:.0f} MB")
    return len(kept)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_miou(work_dir):
    """Best validation mIoU (%) of the pretraining run on the source task, from its train.log, or None."""
    import re
    try:
        text = open(os.path.join(work_dir, "train.log"), encoding="utf-8", errors="replace").read()
    except OSError:
        return None
    values = [float(v) for v in re.findall(r"validation mIoU \(\w+, center crop\) (\d+\.\d+)", text)]
    return max(values) if values else None


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ms_semiseg.demo.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"backbone checkpoint to write (default {DEFAULT_OUT})")
    parser.add_argument("--work-dir", default=WORK_DIR, help=f"training run folder (default {WORK_DIR})")
    parser.add_argument("--data-dir", default=DATA_DIR, help=f"source-task dataset (default {DATA_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--device", default=None, help="CPU or GPU (default: GPU when usable, else CPU)")
    parser.add_argument("--extract-only", metavar="CKPT", default=None,
                        help="skip data and training: extract the backbone from this segmentor checkpoint")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, e.g. trainer.epochs=1")
    return parser.parse_args(argv)


def pretrain(args):
    from .run import prepare_data
    data_dir, work_dir = repo_path(args.data_dir), repo_path(args.work_dir)
    prepare_data(data_dir, SOURCE_DATA, fresh=False)
    command = [sys.executable, "-m", "ms_semiseg", "train", "--config", CONFIG, "--data-root", data_dir,
               "--work-dir", work_dir, "--seed", str(args.seed)]
    if os.path.isfile(os.path.join(work_dir, "checkpoints", "last.ckpt")):
        command.append("--resume")
    if args.device:
        command += ["--device", args.device]
    command += ["--opts", f"dataset.train.data_list={data_dir}/splits/train.txt",
                f"dataset.val.data_list={data_dir}/splits/val.txt", *args.opts]
    code, wall, _ = run_logged(command, os.path.join(work_dir, "train.log"))
    if code != 0:
        raise UserError(f"pretraining failed: {failure_reason(os.path.join(work_dir, 'train.log'), code)}")
    return os.path.join(work_dir, "checkpoints", "best.ckpt"), wall


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.extract_only:
            source, wall, miou = args.extract_only, None, None
        else:
            source, wall = pretrain(args)
            miou = source_miou(repo_path(args.work_dir))
        out = repo_path(args.out)
        count = extract_backbone(source, out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return UserError.exit_code
    provenance = {"made_by": "python -m ms_semiseg.demo.pretrain " + " ".join(argv or sys.argv[1:]),
                  "date": datetime.date.today().isoformat(), "config": os.path.relpath(CONFIG, REPO_ROOT),
                  "source_data": SOURCE_DATA, "seed": args.seed, "opts": args.opts, "stages": list(KEPT_STAGES),
                  "parameters": count, "source_val_miou": miou, "train_s": wall and round(wall),
                  "sha256": sha256(out), "bytes": os.path.getsize(out)}
    from ..utils.atomic import write_text_atomic
    write_text_atomic(os.path.splitext(out)[0] + ".json", json.dumps(provenance, indent=2) + "\n")
    print(f"backbone: {out} ({count} tensors, {provenance['bytes'] / 2**20:.1f} MB, stages "
          f"{'..'.join(KEPT_STAGES[::len(KEPT_STAGES) - 1])}); source-task val mIoU {miou}; provenance "
          f"{os.path.splitext(out)[0]}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
