"""`python -m ms_semiseg env`: versions and usable devices."""
from .device import env_report


def add_arguments(parser):
    del parser  # no options


def run(args):
    print(env_report())
