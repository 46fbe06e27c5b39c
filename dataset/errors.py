"""The exception the readers raise for bad input: it names the file and, where there is one, the line
or record. Defined in the runtime layer (checkpoint and feature files raise it too)."""

from runtime.errors import DataFormatError

__all__ = ["DataFormatError"]
