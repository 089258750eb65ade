"""One error type for problems the user can fix; the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (a path, a flag, a file). The message is one line that names the problem."""

    exit_code = 2
