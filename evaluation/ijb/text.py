"""Reading large whitespace- or comma-separated text files (IJB-C's pair list has 15.7 million lines)
a block of lines at a time with numpy instead of splitting lines in Python.

A block's fields are located at once (runs of non-blank bytes, or the first two comma-separated
columns); integers of up to 8 digits are read eight ASCII bytes to a 64-bit word, and decimals
``[-+]digits[.digits]`` of up to 8 characters as mantissa / 10**digits, which IEEE division rounds
exactly as ``float()`` does. A field outside those fast forms (more digits, an exponent, a sign on
an integer, quotes in a CSV field) goes through Python's ``int``/``float``; one that fails there,
or a line with the wrong number of fields, is a DataFormatError naming the file and the line.
Blocks are parsed two at a time on two threads.
"""

from __future__ import annotations

import functools

import numpy as np

from runtime import DataFormatError

from .protocol import ordered_map

CHUNK_BYTES = 1 << 22
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_POWERS_OF_TEN = 10.0 ** np.arange(23)  # exact in float64 up to 10**22


def _blocks(path, skip_lines: int = 0):
    """(bytes ending at a line end, its offset in the file) of the whole file after `skip_lines`."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise DataFormatError(path, f"cannot read ({error.strerror})") from None
    with handle:
        for _ in range(skip_lines):
            handle.readline()
        while True:
            offset = handle.tell()
            block = handle.read(CHUNK_BYTES)
            if not block:
                return
            if not block.endswith(b"\n"):
                block += handle.readline()
            yield block, offset


def parsed_blocks(path, parse, skip_lines: int = 0):
    """parse(_Block) of every block of the file, in file order, two blocks at a time on two threads."""
    return ordered_map(lambda block: parse(Block(*block, path)), _blocks(path, skip_lines))


class Names:
    """Image names kept as one byte string and offsets (IJB-C lists 469,375 of them twice); a name
    is decoded when it is asked for."""

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def join(cls, parts: list) -> "Names":
        blob = b"".join(part.blob for part in parts)
        lengths = np.concatenate([np.diff(part.offsets) for part in parts] or [np.zeros(0, np.int64)])
        return cls(blob, np.concatenate(([0], np.cumsum(lengths))))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        return self.blob[self.offsets[index]:self.offsets[index + 1]].decode("utf-8", "replace")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def first_difference(self, other: "Names") -> int | None:
        """The first row whose name differs, or None when both list the same names in the same order."""
        if len(self) == len(other) and np.array_equal(self.offsets, other.offsets) and self.blob == other.blob:
            return None
        rows = min(len(self), len(other))
        same_length = self.offsets[1:rows + 1] - self.offsets[:rows] == other.offsets[1:rows + 1] - other.offsets[:rows]
        return next((row for row in range(rows) if not same_length[row] or self[row] != other[row]), rows)


class Block:
    """The lines of one block of a file; fields are given as byte ``starts``/``stops`` [lines, fields]."""

    def __init__(self, data: bytes, offset: int, path):
        self.data, self.offset, self.path = data, offset, path
        self.buffer = np.frombuffer(data, dtype=np.uint8)

    @functools.cached_property
    def line_starts(self) -> np.ndarray:
        newlines = np.flatnonzero(self.buffer == 10)
        return np.concatenate(([0], newlines + 1))[:len(newlines) + (not self.data.endswith(b"\n"))]

    @functools.cached_property
    def line_stops(self) -> np.ndarray:
        return np.append(self.line_starts[1:] - 1, len(self.data))

    @functools.cached_property
    def first_line(self) -> int:
        """The file's line number of the block's first line (counted only when it is asked for)."""
        with open(self.path, "rb") as handle:
            before = handle.read(self.offset)
        return before.count(b"\n") + 1

    def fail(self, line_index: int, problem: str):
        line = self.data[self.line_starts[line_index]:self.line_stops[line_index]]
        text = line.decode("utf-8", "replace").strip()
        text = text if len(text) <= 80 else text[:77] + "..."
        raise DataFormatError(self.path, f"{problem}; the line reads {text!r}", f"line {self.first_line + line_index}")

    def split_whitespace(self, n_fields: int, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, stops [kept lines, n_fields], the kept lines' indices): runs of non-blank bytes;
        blank lines are skipped, as the references' readers skip them."""
        solid = (~_WHITESPACE[self.buffer]).view(np.int8)
        edges = np.diff(solid, prepend=np.int8(0), append=np.int8(0))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        counts = np.diff(np.searchsorted(starts, self.line_stops), prepend=0)
        wrong = np.flatnonzero((counts != 0) & (counts != n_fields))
        if wrong.size:
            self.fail(int(wrong[0]), f"expected {n_fields} fields ({layout}), got {int(counts[wrong[0]])}")
        return starts.reshape(-1, n_fields), stops.reshape(-1, n_fields), np.flatnonzero(counts)

    def split_csv(self, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, stops [kept lines, 2], kept line indices) of the first two comma-separated fields."""
        solid = np.concatenate(([0], np.cumsum(~_WHITESPACE[self.buffer], dtype=np.int64)))
        kept = np.flatnonzero(solid[self.line_stops] > solid[self.line_starts])  # blank lines are skipped
        line_starts, stops = self.line_starts[kept], self.line_stops[kept]
        stops = stops - (self.buffer[np.maximum(stops - 1, 0)] == 13)  # CRLF line ends
        commas = np.flatnonzero(self.buffer == 44)
        first = np.searchsorted(commas, line_starts)
        padded = np.concatenate((commas, [len(self.data)] * 2))
        comma1, comma2 = padded[first], padded[first + 1]
        short = np.flatnonzero(comma1 >= stops)
        if short.size:
            self.fail(int(kept[short[0]]), f"expected at least 2 comma-separated columns ({layout})")
        field_starts = np.stack((line_starts, comma1 + 1), axis=1)
        field_stops = np.stack((comma1, np.minimum(comma2, stops)), axis=1)
        return field_starts, field_stops, kept

    def canonical_integers(self, n_fields: int) -> np.ndarray | None:
        """int64 [lines, n_fields] when every line is exactly ``digits SP digits ... LF`` of at most 8
        digits each (how the pair lists are written), without tokenising; None for anything else."""
        data, buffer = self.data, self.buffer
        if not data.endswith(b"\n") or data.translate(None, b"0123456789 \n"):
            return None
        separators = np.flatnonzero(buffer < 48)  # space and newline sort below the digits
        if separators.size % n_fields:
            return None
        kinds = buffer[separators].reshape(-1, n_fields)
        lengths = np.diff(separators, prepend=-1) - 1
        if (kinds[:, -1] != 10).any() or (kinds[:, :-1] != 32).any() or lengths.min() < 1 or lengths.max() > 8:
            return None
        return _eight_digits(_words(buffer, separators, lengths, digits_only=True)).reshape(-1, n_fields)

    def names(self, starts, stops) -> Names:
        marks = _field_marks(len(self.buffer), starts, stops)
        return Names(self.buffer[marks].tobytes(), np.concatenate(([0], np.cumsum(stops - starts))))

    def integers(self, starts, stops, kept, what: str) -> np.ndarray:
        """int64 of each field; digit runs of up to 8 digits are read in bulk, the rest by ``int()``."""
        lengths = stops - starts
        words = _words(self.buffer, stops, lengths)
        slow = (lengths < 1) | (lengths > 8) | ~_all_digits(words)
        values = _eight_digits(np.where(slow, _ZEROS, words))
        for row in np.flatnonzero(slow).tolist():
            token = self.data[starts[row]:stops[row]].decode("utf-8", "replace")
            try:
                values[row] = int(token.strip().strip('"'))
            except ValueError:
                self.fail(int(kept[row]), f"{what} must be an integer, got {token!r}")
        return values

    def decimals(self, starts, stops, kept, what: str) -> np.ndarray:
        """float64 of each field: ``[-+]digits[.digits]`` of at most 8 digits and point in bulk, the
        rest by ``float()``; both round as ``float()`` does."""
        signed = np.isin(self.buffer[starts], (43, 45))
        body = stops - starts - signed
        words = _words(self.buffer, stops, body)
        # The point's byte: the lowest zero byte of words ^ '.' (the classic has-zero-byte test).
        flipped = words ^ np.uint64(0x2E2E2E2E2E2E2E2E)
        zero = (flipped - np.uint64(0x0101010101010101)) & ~flipped & np.uint64(0x8080808080808080)
        has_dot = zero != 0
        lowest = np.where(has_dot, zero & (~zero + np.uint64(1)), np.uint64(128))  # bit 7 of the point's byte
        point = ((np.log2(lowest.astype(np.float64)) - 7) / 8).astype(np.uint64) * np.uint64(8)
        below = (np.uint64(1) << point) - np.uint64(1)
        # the digits before the point (the word's lower bytes) move one byte up, over it
        digits = np.where(has_dot, ((words & below) << np.uint64(8)) | (words & ~(below | (np.uint64(255) << point)))
                          | np.uint64(48), words)
        slow = (body < 1 + has_dot) | (body > 8) | ~_all_digits(digits)
        mantissa = _eight_digits(np.where(slow, _ZEROS, digits))
        fraction = np.where(has_dot, 7 - point.astype(np.int64) // 8, 0)
        values = mantissa / _POWERS_OF_TEN[fraction]
        values = np.where(self.buffer[starts] == 45, -values, values)
        for row in np.flatnonzero(slow).tolist():
            token = self.data[starts[row]:stops[row]].decode("utf-8", "replace")
            try:
                values[row] = float(token)
            except ValueError:
                self.fail(int(kept[row]), f"{what} must be a number, got {token!r}")
        return values


def _field_marks(size: int, starts, stops) -> np.ndarray:
    """bool [size]: the bytes inside the given fields."""
    marks = np.zeros(size + 1, dtype=np.int8)
    marks[starts] += 1
    marks[stops] -= 1
    return np.cumsum(marks[:-1], dtype=np.int8) > 0


# Eight ASCII bytes as one little-endian word: a field's first byte is the word's lowest.
_ZEROS = np.uint64(0x3030303030303030)
_LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F
_KEEP = np.array([0] + [((1 << 64) - 1) ^ ((1 << (8 * (8 - length))) - 1) for length in range(1, 9)], dtype=np.uint64)
_KEEP_DIGITS = _KEEP & np.uint64(_LOW_NIBBLES)
_FILL = _ZEROS & ~_KEEP


def _words(buffer, stops, lengths, digits_only: bool = False) -> np.ndarray:
    """uint64 [fields]: the last `lengths` (at most 8) bytes of each field, right-aligned, ASCII '0'
    before them, so that a digit field reads as its zero-padded 8-digit form; with `digits_only`
    (every byte of the fields known to be a digit) just the digits' values, zeros before them."""
    if len(buffer) < 8:
        return _words(np.concatenate((np.full(8, 32, np.uint8), buffer)), stops + 8, lengths, digits_only)
    unaligned = np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    words = unaligned[np.maximum(stops - 8, 0)]
    early = np.flatnonzero(stops < 8)  # fields ending in the first 8 bytes: move them up into place
    words[early] <<= (np.uint64(8) * (8 - stops[early]).astype(np.uint64))
    lengths = np.clip(lengths, 0, 8)
    if digits_only:
        words &= _KEEP_DIGITS[lengths]
        return words
    words &= _KEEP[lengths]
    words |= _FILL[lengths]
    return words


def _all_digits(words) -> np.ndarray:
    """Whether all 8 bytes of each word are ASCII digits: high nibble 3, and adding 6 to the byte
    does not carry out of the low nibble."""
    high = np.uint64(0xF0F0F0F0F0F0F0F0)
    return ((words & high) == _ZEROS) & (((words + np.uint64(0x0606060606060606)) & high) == _ZEROS)


def _eight_digits(words) -> np.ndarray:
    """int64 values of words of 8 ASCII digits (or digit values), the most significant the lowest
    byte: neighbouring digits, then pairs, then quadruples combined by one multiply each
    (10 * 2**8 + 1, 100 * 2**16 + 1, 10000 * 2**32 + 1)."""
    word = words & np.uint64(_LOW_NIBBLES)
    for factor, shift, mask in ((2561, 8, 0x00FF00FF00FF00FF), (6553601, 16, 0x0000FFFF0000FFFF),
                                (42949672960001, 32, None)):
        word *= np.uint64(factor)
        word >>= np.uint64(shift)
        if mask is not None:
            word &= np.uint64(mask)
    return word.astype(np.int64)
