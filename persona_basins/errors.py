"""One error type for problems the user can fix; the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """Bad input (a path, a flag, a file). The message is one line that names the problem."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config dataclass field holds a bad value: ``FinetuneConfig.lr must be a finite number > 0, got 0``
    (also a ValueError, as such checks raised before).

    ``owner`` is the class name, ``field`` the field name and ``problem`` the ``must be ..., got ...`` part,
    so the command line can name its flag instead (``--lr must be ...``, see ``commands/args.FIELD_FLAGS``).
    """

    def __init__(self, owner: str, field: str, problem: str):
        self.owner, self.field, self.problem = owner, field, problem
        super().__init__(f"{owner}.{field} {problem}")

    def __reduce__(self):  # picklable across worker processes (the default would pass only the message)
        return type(self), (self.owner, self.field, self.problem)


class ArgumentError(UserError):
    """A study's argument holds a bad value: ``out runs/x exists and is not a directory``.

    ``argument`` is the Python parameter name (``out``, ``em_run``, ``max_checkpoints``) and ``problem`` the
    rest, which names the value but no flag: the layers below the command line do not know flag names. The
    CLI prints the flag of the command that ran instead (``--em-run runs/em: ...``, see ``cli.error_text``).
    """

    def __init__(self, argument: str, problem: str):
        self.argument, self.problem = argument, problem
        super().__init__(f"{argument} {problem}")

    def __reduce__(self):  # picklable across worker processes (the default would pass only the message)
        return type(self), (self.argument, self.problem)
