"""Atomic file writes: write a temp file in the destination folder, fsync, then os.replace.

A crash or kill during the write leaves the previous file intact and at most a `*.tmp-*` file behind, which
`cleanup_stale_temps` removes on the next run.
"""
import contextlib
import errno
import glob
import os

from ..errors import UserError


def temp_path_for(path, suffix=""):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}{suffix}")


def ensure_writable_dir(folder, what="output folder"):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the {what} ({exc.strerror}), expected a writable path") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: the {what} is not writable, expected a folder you can write to")


@contextlib.contextmanager
def atomic_target(path, suffix=""):
    """Yields a temp path to write; on success it replaces `path`, on any error it is removed.

    `suffix` keeps a required extension on the temp file (mindspore.save_checkpoint appends '.ckpt' otherwise)."""
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise UserError(f"{path}: write failed ({exc.strerror}); the previous file, if any, is unchanged") from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_bytes_atomic(path, data):
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text_atomic(path, text):
    write_bytes_atomic(path, text.encode("utf-8"))


def cleanup_stale_temps(folder):
    for stale in glob.glob(os.path.join(folder, ".*.tmp-*")):
        _remove_quietly(stale)


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)
