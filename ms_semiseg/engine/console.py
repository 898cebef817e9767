"""Progress messages printed beside tqdm bars (the trainer's and the methods' own, on stderr; rank 0 only)."""
import sys

from tqdm import tqdm

from .distributed import main_process_only


@main_process_only
def say(message):
    """Print one line to stderr without breaking an active progress bar; the other ranks stay silent."""
    tqdm.write(message, file=sys.stderr)
