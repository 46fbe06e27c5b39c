"""Errors a user can fix, told in one line: what is wrong, where (file, line, record or key), and
what would be valid. Entry points print them without a traceback (runtime.cli.run_cli)."""

import difflib


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


class UnknownName(UsageError):
    """A name that a registry does not hold (a backbone, head, optimizer, device, protocol, format, ...),
    told the same way everywhere: `unknown <kind> '<name>'; valid: a, b, c`, with where the name came
    from (a file and line, an option) in front when the caller knows it, and the closest valid name
    when one is close."""

    def __init__(self, kind: str, name, valid, where: str | None = None, suggestion: str | None = None):
        self.kind, self.name, self.valid, self.where = kind, name, tuple(str(item) for item in valid), where
        if suggestion is None:
            close = difflib.get_close_matches(str(name), self.valid, n=1, cutoff=0.6)
            suggestion = close[0] if close else None
        self.suggestion = suggestion
        message = f"unknown {kind} {name!r}; valid: {', '.join(self.valid) or '(none)'}"
        if suggestion:
            message += f" (did you mean {suggestion!r}?)"
        super().__init__(f"{where}: {message}" if where else message)

    def __str__(self) -> str:  # subclasses that are also KeyErrors would quote the message
        return str(self.args[0])

    def __reduce__(self):  # DataLoader workers pickle errors back to the main process
        return type(self), (self.kind, self.name, self.valid, self.where, self.suggestion)
