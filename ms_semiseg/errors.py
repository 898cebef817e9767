"""User-facing errors: one line, exit code 2, no traceback (see `ms_semiseg.cli.run_cli`).

A UserError raised inside the `mindspore.dataset` pipeline (a corrupt image met by a loader worker) comes back
from MindSpore as a RuntimeError whose text holds a traceback, "Dataset Pipeline Error Message" and a C++ call
stack. The training source (`ms_semiseg.engine.pipeline`) re-raises it as a `MarkedUserError`, whose text holds
the message between markers, and `user_error_in` recovers the UserError from any exception wrapping that text,
so the user still sees the one line."""
import re

_MARK_OPEN, _MARK_CLOSE = "<<ms_semiseg user error ", ">>"
_MARKED = re.compile(re.escape(_MARK_OPEN) + r"(\d+)\|(.*?)\|" + re.escape(_MARK_CLOSE), re.DOTALL)


class UserError(Exception):
    """Bad input from the user (file, key, value). The message must name the culprit and what was expected."""

    exit_code = 2
    prefix = "error"  # the word before the message on the user's line


class Interrupted(UserError):
    """SIGINT / SIGTERM: the run stopped cleanly; the message says where to resume from."""

    prefix = "interrupted"

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def fail(message):
    raise UserError(message)


class MarkedUserError(RuntimeError):
    """A UserError travelling through code that wraps exceptions into text (MindSpore's dataset workers)."""

    def __init__(self, error):
        # MindSpore's workers re-create the exception from its formatted traceback text: keep such text as is
        text = f"{_MARK_OPEN}{error.exit_code}|{error}|{_MARK_CLOSE}" if isinstance(error, UserError) else error
        super().__init__(text)


def user_error_in(exc):
    """The UserError carried by `exc` (itself, or marked in its text), else None."""
    if isinstance(exc, UserError):
        return exc
    match = _MARKED.search(str(exc))
    if match is None:
        return None
    error = UserError(match.group(2))
    error.exit_code = int(match.group(1))
    return error
