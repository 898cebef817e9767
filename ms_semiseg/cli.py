"""`python -m ms_semiseg <command>`: every command is a module with `add_arguments(parser)` and `run(args)`.

User errors (UserError) end with one line on stderr and exit code 2, without a traceback.
"""
import argparse
import importlib
import importlib.util
import os
import sys

from .errors import UserError, user_error_in

COMMANDS = {
    "env": ("ms_semiseg.device_cli", "print MindSpore/torch/numpy/CUDA versions and usable devices"),
    "eval": ("ms_semiseg.eval.evaluate", "evaluate a checkpoint with the upstream protocol (mIoU)"),
    "infer": ("ms_semiseg.eval.infer", "segment your own images (color masks and overlays)"),
    "export": ("ms_semiseg.eval.export", "export a MindIR or ONNX file for deployment"),
    "train": ("ms_semiseg.train.trainer", "train supervised / PCR / BRPG natively in MindSpore"),
    "demo": ("ms_semiseg.demo.run", "run the bundled CPU demo end to end"),
    "split": ("ms_semiseg.data.make_splits", "write labeled/unlabeled split lists for your dataset"),
    "init-protos": ("ms_semiseg.methods.pcr.proto_init", "k-means prototype initialisation from a checkpoint"),
    "convert": ("ms_semiseg.converter", "PyTorch <-> MindSpore checkpoints (.pth/.ckpt/.safetensors) and parity"),
    "report": ("ms_semiseg.eval.report", "VOC / Cityscapes tables: eval metrics.json vs the published mIoU"),
}


def quiet_mindspore_logs():
    # MindSpore logs INFO/WARNING lines through glog to stderr; keep errors only unless the user asks for more
    os.environ.setdefault("GLOG_v", "3")


def program_name():
    """`ms-semiseg` when run as the installed command, else `python -m ms_semiseg`."""
    return "ms-semiseg" if os.path.basename(sys.argv[0] or "") == "ms-semiseg" else "python -m ms_semiseg"


def build_parser(available):
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    modules = {}
    for name, (module_name, help_text) in available.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser, modules


def available_commands():
    """Commands whose module exists (the package grows command by command)."""
    found = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is not None:
            found[name] = (module_name, help_text)
    return found


def run_cli(run, argv=None):
    """Runs `run(argv)`; UserError (also one wrapped by MindSpore's dataset pipeline) -> `error: <message>` on
    stderr and exit 2 (Interrupted: `interrupted: <message>`, exit 130 / 143)."""
    quiet_mindspore_logs()
    try:
        return run(argv) or 0
    except UserError as exc:
        print(f"{exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:  # a UserError that MindSpore's dataset pipeline wrapped into its own error text
        error = user_error_in(exc)
        if error is None:
            raise
        print(f"{error.prefix}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert"]:  # the converter parses its own arguments (and answers `convert -h` itself)
        from .converter import run_converter
        return run_converter(argv[1:], f"{program_name()} convert")
    parser, modules = build_parser(available_commands())
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


def main(argv=None):
    sys.exit(run_cli(_dispatch, argv))
