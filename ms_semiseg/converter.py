"""`ms-semiseg convert ...` / `python -m ms_semiseg convert ...`: the checkpoint converter (pth2ckpt, ckpt2pth,
random, parity), the same program as `python -m convert ...` in a source checkout and `ms-semiseg-convert ...` after
`pip install`.

Where the converter lives: the repository keeps it in the top-level folder `convert/` (so `python -m convert` keeps
working from the repo root); pyproject.toml installs that folder as the subpackage `ms_semiseg.convert`, so an
installed package carries it and puts no bare `convert` module into site-packages. `converter_module` finds it under
either name: `ms_semiseg.convert` when installed, else the `convert/` folder next to this package's folder (a source
checkout) - never an unrelated `convert` module found elsewhere on sys.path.
"""
import argparse
import importlib
import os
import sys

from .errors import UserError

INSTALLED_NAME = "ms_semiseg.convert"
SOURCE_NAME = "convert"


def _source_checkout_folder():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), SOURCE_NAME)


def converter_package():
    """The converter package: `ms_semiseg.convert` (installed) or the checkout's top-level `convert` package."""
    try:
        return importlib.import_module(INSTALLED_NAME)
    except ModuleNotFoundError as exc:
        if exc.name != INSTALLED_NAME:
            raise
    folder = _source_checkout_folder()
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        raise UserError("the checkpoint converter is not installed: expected the subpackage ms_semiseg.convert "
                        "(pip install .) or the convert/ folder of a source checkout")
    root = os.path.dirname(folder)
    if root not in sys.path:
        sys.path.insert(0, root)
    package = importlib.import_module(SOURCE_NAME)
    if os.path.dirname(os.path.abspath(package.__file__)) != folder:
        raise UserError(f"`import {SOURCE_NAME}` found {package.__file__}, not the checkout's converter in {folder}")
    return package


def converter_module(name):
    """A module of the converter, e.g. converter_module('parity') (see converter_package)."""
    return importlib.import_module(f"{converter_package().__name__}.{name}")


def add_arguments(parser):
    # shown by `ms-semiseg -h` only: `ms-semiseg convert ...` is handed to the converter's own parser (cli.main)
    parser.add_argument("converter_args", nargs=argparse.REMAINDER, metavar="...",
                        help="pth2ckpt | ckpt2pth | random | parity and their options (`convert -h` lists them)")


def run_converter(argv, prog):
    cli = converter_module("cli")
    args = cli.build_parser(prog=prog).parse_args(argv)
    return args.func(args)


def run(args):
    return run_converter(args.converter_args, "ms-semiseg convert")
