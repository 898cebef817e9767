"""`python -m convert {pth2ckpt,ckpt2pth,random,parity}` (installed: `ms-semiseg convert ...` or `ms-semiseg-convert`).

Checkpoints in: PyTorch .pth (torch.save) or .safetensors state dicts; MindSpore .ckpt or .safetensors (told apart by
their bytes). Out: `--format` (default from the --out suffix): pth2ckpt ckpt|safetensors, ckpt2pth pth|safetensors."""
import argparse
import os
import sys
import time

import numpy as np

from ms_semiseg.cli import run_cli
from ms_semiseg.config import load_config, net_config
from ms_semiseg.errors import UserError

from . import mapping


def build_ms_model(cfg):
    from ms_semiseg.models import create_model
    return create_model(net_config(cfg))


def expected_shapes(cfg, encoder_only=False):
    from ms_semiseg.utils.checkpoint import model_shapes
    shapes = model_shapes(build_ms_model(cfg))
    if encoder_only:
        shapes = {k: v for k, v in shapes.items() if k.startswith("encoder.")}
    return shapes


def pth_to_ms_params(cfg, pth_path, state=None):
    """Reads a .pth and returns (MindSpore-named numpy params checked against the model, what was read)."""
    from ms_semiseg.utils.checkpoint import compare_to_model
    state_dict, entry = mapping.read_pth(pth_path, state)
    backbone = mapping.is_imagenet_backbone(state_dict)
    deep_stem = (cfg["net"]["encoder"].get("kwargs") or {}).get("deep_stem", True)
    mapping.check_stem(state_dict, deep_stem, pth_path)
    if backbone:
        state_dict, entry = mapping.backbone_to_encoder(state_dict), "ImageNet backbone (fc.* ignored)"
    params = mapping.torch_to_ms(state_dict)
    compare_to_model(params, expected_shapes(cfg, encoder_only=backbone), pth_path)
    return params, entry


def cmd_pth2ckpt(args):
    from ms_semiseg.utils.checkpoint import output_format, save_params_atomic
    fmt = output_format(args.out, args.format)
    cfg = load_config(args.config, args.opts)
    start = time.perf_counter()
    params, entry = pth_to_ms_params(cfg, args.pth, args.state)
    if args.module_prefix:
        params = {"module." + k: v for k, v in params.items()}
    save_params_atomic(params, args.out, format=fmt)
    print(f"read {entry} of {args.pth}: {len(params)} tensors -> {args.out} ({fmt}, "
          f"{time.perf_counter() - start:.1f} s)")


def read_ms_params(cfg, ckpt_path, say=print):
    """Numpy params of a MindSpore .ckpt checked against the model: ours, `module.`-prefixed, or a file of the original
    PCR MindSpore release (its missing aux-conv bias read as zeros); harmless extras skipped (see match_checkpoint)."""
    from ms_semiseg.utils.checkpoint import match_checkpoint, read_checkpoint
    params, report = match_checkpoint(read_checkpoint(ckpt_path), expected_shapes(cfg), ckpt_path)
    for note in report.notes:
        say(note)
    return {k: v.asnumpy() for k, v in params.items()}


def torch_output_format(path, requested=None):
    """'pth' or 'safetensors' for ckpt2pth's output: --format when given, else the --out suffix."""
    if requested is not None:
        return requested
    return "safetensors" if str(path).lower().endswith(".safetensors") else "pth"


def cmd_ckpt2pth(args):
    torch = mapping.import_torch()
    from ms_semiseg.utils.atomic import atomic_target
    from .torch_model import TorchModelBuilder
    fmt = torch_output_format(args.out, args.format)
    if fmt == "safetensors" and not args.plain:
        raise UserError("--format safetensors writes a flat state dict: add --plain (the U2PL layout nests "
                        "model_state, which safetensors cannot hold)")
    cfg = load_config(args.config, args.opts)
    torch_params = mapping.ms_to_torch(read_ms_params(cfg, args.ckpt))
    reference = TorchModelBuilder(net_config(cfg)).state_dict()
    state_dict = {k: torch.from_numpy(np.ascontiguousarray(torch_params[k])) for k in reference}
    reference_model = TorchModelBuilder(net_config(cfg))
    reference_model.load_state_dict(state_dict, strict=True)  # proves the file loads strictly before writing it
    payload = state_dict if args.plain else {"model_state": {"module." + k: v for k, v in state_dict.items()}}
    with atomic_target(args.out) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file
            save_file(state_dict, tmp, metadata={"format": "pt"})
        else:
            torch.save(payload, tmp)
    print(f"{args.ckpt}: {len(state_dict)} tensors -> {args.out}"
          + (" (safetensors state dict)" if fmt == "safetensors" else "")
          + ("" if args.plain else " (U2PL layout: model_state with module. prefix)"))


def cmd_random(args):
    torch = mapping.import_torch()
    from ms_semiseg.utils.atomic import atomic_target
    from .reference import random_reference_model
    cfg = load_config(args.config, args.opts)
    teacher = random_reference_model(net_config(cfg), seed=args.seed)
    teacher_state = {"module." + k: v for k, v in teacher.state_dict().items()}
    # the student differs slightly, so tools that must pick the teacher are checked by tests
    gen = torch.Generator().manual_seed(args.seed + 1)
    model_state = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
                   for k, v in teacher_state.items()}
    with atomic_target(args.out) as tmp:
        torch.save({"model_state": model_state, "teacher_state": teacher_state, "optimizer_state": {},
                    "epoch": 0, "best_miou": 0.0}, tmp)
    print(f"random U2PL-layout checkpoint ({len(teacher_state)} keys, seed {args.seed}) -> {args.out}")


def cmd_parity(args):
    from .parity import run_parity
    return run_parity(args)


def add_common(parser, opts=True):
    parser.add_argument("--config", required=True, help="upstream config.yaml (its net: section builds the model)")
    if opts:
        parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                            help="config overrides, e.g. net.encoder.kwargs.stem_pool=same")


def program_name():
    """`ms-semiseg-convert` when run as that installed command, else `python -m convert`."""
    return "ms-semiseg-convert" if os.path.basename(sys.argv[0] or "") == "ms-semiseg-convert" else "python -m convert"


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog or program_name(), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pth2ckpt", help="PyTorch U2PL/PCR .pth or .safetensors (or ImageNet ResNet) -> MindSpore "
                                        ".ckpt or .safetensors")
    add_common(p)
    p.add_argument("--pth", required=True, help="torch.save file, or a state dict saved as .safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("ckpt", "safetensors"), default=None,
                   help="MindSpore checkpoint format to write (default: safetensors when --out ends in "
                        ".safetensors, else ckpt)")
    p.add_argument("--state", default=None, help="entry of the checkpoint dict (default: teacher_state when "
                                                 "present, else model_state, state_dict, model, or a plain state_dict;"
                                                 " in a .safetensors file: a name prefix)")
    p.add_argument("--module-prefix", action="store_true",
                   help="write `module.`-prefixed names, as the original PCR MindSpore eval.py expects")
    p.set_defaults(func=cmd_pth2ckpt)
    p = sub.add_parser("ckpt2pth", help="MindSpore .ckpt (ours or the original PCR MindSpore release's) -> PyTorch "
                                        ".pth (loads with strict=True)")
    add_common(p)
    p.add_argument("--ckpt", required=True, help="MindSpore .ckpt or .safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--plain", action="store_true", help="write a bare state_dict instead of the U2PL layout")
    p.add_argument("--format", choices=("pth", "safetensors"), default=None,
                   help="pth (torch.save) or safetensors (a flat state dict, needs --plain); default: safetensors "
                        "when --out ends in .safetensors, else pth")
    p.set_defaults(func=cmd_ckpt2pth)
    p = sub.add_parser("random", help="randomly initialised reference checkpoint in the U2PL layout")
    add_common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_random)
    p = sub.add_parser("parity", help="run PyTorch and MindSpore on the same input and compare every head")
    add_common(p, opts=False)
    p.add_argument("--pth", default=None, help="weights to compare (default: random weights)")
    p.add_argument("--state", default=None)
    p.add_argument("--height", type=int, default=513)
    p.add_argument("--width", type=int, default=513)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="CPU", help="CPU or GPU (torch uses CUDA when GPU)")
    p.add_argument("--mode", choices=("pynative", "graph"), default="pynative", help="MindSpore execution mode")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp64", action="store_true",
                   help="also run torch in float64 and show both fp32 models' distance to it (the rounding floor)")
    p.set_defaults(func=cmd_parity)
    return parser


def _run(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None):
    sys.exit(run_cli(_run, argv))
