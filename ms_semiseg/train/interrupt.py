"""SIGINT / SIGTERM during training: stop cleanly between steps.

The first signal only sets a flag (and says so on stderr); the trainer looks at it between iterations: the step
that is running finishes (with gradient accumulation, the update), the log is flushed, `last.ckpt` is saved at
that position (atomic write) and the run ends with `interrupted: ...` naming the checkpoint and the exact command
that resumes it, exit code 130 (SIGINT) / 143 (SIGTERM). A second signal stops at once (KeyboardInterrupt /
exit 143); `last.ckpt` is then the last complete one, never a partial file (atomic writes).
"""
import os
import shlex
import signal
import sys
import threading

from ..errors import Interrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Installs the handlers for the duration of a `with` block (main thread only); `signum` is the first signal
    received, None while none was."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __bool__(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            # os.write: a signal handler must not re-enter a buffered stream the main thread may be writing to
            os.write(2, f"\n{name} received: stopping after the current step and saving last.ckpt ({again} again "
                        "stops at once)\n".encode())
            return
        self.restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(EXIT_CODES[signum])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self.restore()
        return False

    def interrupted(self, where, checkpoint, resume_command):
        """The Interrupted error to raise once stopped (`checkpoint`: what last.ckpt now holds, or None)."""
        name = signal.Signals(self.signum).name
        if checkpoint is None:
            return Interrupted(f"{name} {where}; no checkpoint was saved yet, start again with: "
                               f"{resume_command(False)}", EXIT_CODES[self.signum])
        return Interrupted(f"{name} {where}; {checkpoint}; resume with: {resume_command(True)}",
                           EXIT_CODES[self.signum])


def resume_command(args, work_dir, resume=True):
    """The `train` command line that continues this run (same config, opts, data root and device)."""
    argv = ["python", "-m", "ms_semiseg", "train",
            "--config", os.path.abspath(args.config), "--work-dir", work_dir]
    if getattr(args, "device", None):
        argv += ["--device", args.device]
    if getattr(args, "data_root", None):
        argv += ["--data-root", os.path.abspath(args.data_root)]
    if not resume and getattr(args, "pretrained", None):
        argv += ["--pretrained", os.path.abspath(args.pretrained)]
    if not resume and getattr(args, "seed", None) is not None:
        argv += ["--seed", str(args.seed)]
    if getattr(args, "distributed", False):
        argv.append("--distributed")
    if resume:
        argv.append("--resume")
    if getattr(args, "opts", None):
        argv += ["--opts", *args.opts]
    return shlex.join(argv)
