"""Errors a user can fix, told in one line: what is wrong, where (file, line, record or key), and
what would be valid. Entry points print them without a traceback (runtime.cli.run_cli)."""


class UserError(Exception):
    """Bad input rather than a bug. `exit_status` is what the command exits with."""

    exit_status = 1


class UsageError(UserError, ValueError):
    """A bad option or config value, found before any work starts (exit status 2, as argparse's)."""

    exit_status = 2


class DataFormatError(UserError, ValueError):
    """A file is missing, truncated or not in the format its reader expects."""

    def __init__(self, path, problem: str, where: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.where = where
        location = f"{self.path}, {where}" if where else self.path
        super().__init__(f"{location}: {problem}")

    def __reduce__(self):  # DataLoader workers pickle it back to the main process
        return type(self), (self.path, self.problem, self.where)


def listed(items, shown: int = 4, separator: str = ", ") -> str:
    """The first `shown` items joined, and how many more there are: keeps a message to one line."""
    items = list(items)
    text = separator.join(str(item) for item in items[:shown])
    return text + (f" (+{len(items) - shown} more)" if len(items) > shown else "")
