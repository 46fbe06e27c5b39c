"""The one exception type the readers raise for bad input, so callers can catch data problems apart
from programming errors. Its message always names the file and, where there is one, the line or
record."""


import sys


class DataFormatError(ValueError):
    """A data file is missing, truncated or not in the format its reader expects."""

    def __init__(self, path, problem: str, where: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.where = where
        location = f"{self.path}, {where}" if where else self.path
        super().__init__(f"{location}: {problem}")


def run_cli(main) -> None:
    """Run a command-line entry point; bad data ends it with its one-line message, not a traceback."""
    try:
        main()
    except DataFormatError as error:
        sys.exit(f"error: {error}")
