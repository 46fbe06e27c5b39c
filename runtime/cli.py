"""What every command-line entry point shares."""

import argparse
import sys

from .errors import UserError


def run_cli(main) -> None:
    """Run an entry point; a UserError ends it with its one-line message and exit status, not a traceback."""
    try:
        main()
    except UserError as error:
        if error.exit_status == 1:
            sys.exit(f"error: {error}")  # Python prints the message to stderr and exits with 1
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
