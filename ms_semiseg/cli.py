"""`python -m ms_semiseg <command>`: every command is a module with `add_arguments(parser)` and `run(args)`.

User errors (UserError) end with one line on stderr and exit code 2, without a traceback.
"""
import argparse
import importlib
import importlib.util
import os
import sys

from .errors import UserError

COMMANDS = {
    "env": ("ms_semiseg.device_cli", "print MindSpore/torch/numpy/CUDA versions and usable devices"),
    "eval": ("ms_semiseg.eval.evaluate", "evaluate a checkpoint with the upstream protocol (mIoU)"),
    "infer": ("ms_semiseg.eval.infer", "segment your own images (color masks and overlays)"),
    "export": ("ms_semiseg.eval.export", "export a MindIR file for deployment"),
    "train": ("ms_semiseg.train.trainer", "train supervised / PCR / BRPG natively in MindSpore"),
    "demo": ("ms_semiseg.demo.run", "run the bundled CPU demo end to end"),
    "split": ("ms_semiseg.data.make_splits", "write labeled/unlabeled split lists for your dataset"),
    "init-protos": ("ms_semiseg.train.proto_init", "k-means prototype initialisation from a checkpoint"),
}


def quiet_mindspore_logs():
    # MindSpore logs INFO/WARNING lines through glog to stderr; keep errors only unless the user asks for more
    os.environ.setdefault("GLOG_v", "3")


def build_parser(available):
    parser = argparse.ArgumentParser(prog="python -m ms_semiseg", description=__doc__.splitlines()[0])
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
    """Runs `run(argv)`; UserError -> `error: <message>` on stderr and exit 2."""
    quiet_mindspore_logs()
    try:
        return run(argv) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(argv):
    parser, modules = build_parser(available_commands())
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


def main(argv=None):
    sys.exit(run_cli(_dispatch, argv))
