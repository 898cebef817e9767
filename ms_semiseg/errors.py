"""User-facing errors: one line, exit code 2, no traceback (see `ms_semiseg.cli.run_cli`)."""


class UserError(Exception):
    """Bad input from the user (file, key, value). The message must name the culprit and what was expected."""

    exit_code = 2


def fail(message):
    raise UserError(message)
