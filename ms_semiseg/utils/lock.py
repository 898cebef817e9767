"""One run per output folder: `<folder>/.ms_semiseg.lock`, created atomically (O_CREAT | O_EXCL) and holding the
owner's pid, host, start time and command.

A second command on a folder in use fails at once (UserError naming the folder and the owner). A lock whose owner
is gone (same host and boot, and the pid no longer runs or now belongs to a process started later) is stale: it
is taken over, so a killed run does not block `--resume`. A lock written on another host cannot be checked and
counts as held; the message says which file to delete if that run is gone. Released (deleted) when the command
ends, also on errors and interrupts; a SIGKILL leaves it behind, stale.
"""
import contextlib
import json
import os
import socket
import sys
import time

from ..errors import UserError
from .atomic import ensure_writable_dir

LOCK_NAME = ".ms_semiseg.lock"


def lock_path(folder):
    return os.path.join(os.path.abspath(folder), LOCK_NAME)


def _boot_id():
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    return None


def _process_start(pid):
    """Start time of `pid` in clock ticks since boot (Linux), None when unknown; raises ProcessLookupError when
    there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(owner):
    """Whether the process recorded in a lock is certainly gone (only decidable on the host that wrote it)."""
    if owner.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot and owner.get("boot_id") and owner["boot_id"] != boot:
        return True  # written before a reboot
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if not _pid_alive(pid):
        return True
    try:
        started = _process_start(pid)
    except ProcessLookupError:
        return True
    recorded = owner.get("proc_start")
    return started is not None and recorded is not None and started != recorded  # the pid was reused


def _read_owner(path):
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, None
    try:
        owner = json.loads(text)
    except ValueError:
        owner = None
    return text, owner if isinstance(owner, dict) else {}


def describe(owner):
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {when}"


class FolderLock:
    """`with FolderLock(folder, "work folder"):` owns `folder` for the block (see the module notes)."""

    def __init__(self, folder, what="work folder", hint=""):
        self.folder, self.what, self.hint = os.path.abspath(folder), what, hint
        self.path = lock_path(folder)
        self.held = False

    def _record(self):
        pid = os.getpid()
        with contextlib.suppress(ProcessLookupError):
            start = _process_start(pid)
        return {"pid": pid, "host": socket.gethostname(), "started": time.time(), "boot_id": _boot_id(),
                "proc_start": start, "command": " ".join(sys.argv)}

    def _busy(self, owner):
        return UserError(f"{self.folder}: {self.what} in use by another run ({describe(owner)}), expected one run "
                         f"per folder: wait for it, stop it, or use another folder{self.hint} (if that run is gone, "
                         f"delete {self.path})")

    def acquire(self):
        ensure_writable_dir(self.folder, self.what)
        for _ in range(5):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text, owner = _read_owner(self.path)
                if text is None:
                    continue  # released meanwhile: try again
                if owner and not owner_gone(owner):
                    raise self._busy(owner) from None
                if not owner and time.time() - os.path.getmtime(self.path) < 10:
                    time.sleep(0.2)  # just created, not yet written
                    continue
                _break_stale(self.path, text)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(self._record(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            return self
        raise UserError(f"{self.path}: could not take the lock of the {self.what}, expected a folder no other run "
                        "is starting in at the same moment")

    def check(self):
        """Raises the 'in use' error when a live run holds the folder; takes nothing."""
        text, owner = _read_owner(self.path)
        if text is not None and owner and not owner_gone(owner):
            raise self._busy(owner)

    def release(self):
        if not self.held:
            return
        self.held = False
        text, owner = _read_owner(self.path)
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _break_stale(path, text):
    """Removes a stale lock unless another run replaced it meanwhile (then it is put back)."""
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        with open(aside, encoding="utf-8") as handle:
            replaced = handle.read() != text
    except OSError:
        replaced = False
    if replaced and not os.path.exists(path):
        os.rename(aside, path)
    else:
        with contextlib.suppress(OSError):
            os.remove(aside)
