"""MXNet RecordIO (`.rec` + `.idx`) and insightface's training packs, read and written without MXNet.

The byte format (dmlc-core `recordio.h`, which MXNet's `MXRecordIO` wraps):
  every piece  = uint32 magic 0xCED7230A | uint32 lrec | payload | zero padding to a multiple of 4
  lrec         = cflag << 29 | length          (length < 2**29)
  cflag        = 0 whole record, 1 first piece, 2 middle piece, 3 last piece.
A writer splits a record wherever the magic word occurs at a 4-aligned offset of its payload: the
magic itself is dropped there and the reader puts it back between the pieces. All little-endian.
The `.idx` file has one line per record, "key<TAB>byte offset of its first piece".

A record's payload (`mx.recordio.pack`) starts with an IRHeader, struct 'IfQQ' (24 bytes):
  flag uint32, label float32, id uint64, id2 uint64.
flag == 0: `label` is the label. flag == k > 0: a float32[k] label array follows the header and the
scalar is unused. The image bytes (JPEG or PNG) follow.

insightface packs (`faces_webface_112x112`, `faces_emore`, ...): record 0 is a header whose label
array is [first identity key, end identity key]; images are keys 1 .. first-1 and carry the class as
label (or label[0]); keys first .. end-1 hold one record per identity whose label is the [start, end)
range of its image keys. Packs written by `im2rec` have no header record: every key is an image.
`property` holds "num_classes,height,width".
"""

import os
import struct
import warnings
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from runtime.artifacts import commit, partial_path

from .errors import DataFormatError
from .image_codec import IMAGE_SIZE, check_size, check_size_policy, decode_image, encode_image

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PIECE_HEAD = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


def _aligned(length: int) -> int:
    return (length + 3) & ~3


# ---------------------------------------------------------------- low level: pieces and records

def encode_record(payload: bytes) -> bytes:
    """The bytes MXNet's writer puts on disk for one record (pieces, headers and padding)."""
    if len(payload) >= 1 << 29:
        raise ValueError(f"record of {len(payload)} bytes exceeds RecordIO's 2**29 - 1 limit")
    out = []
    start = 0
    for offset in range(0, len(payload) - len(payload) % 4, 4):
        if payload[offset:offset + 4] == _MAGIC_BYTES:
            out += [_PIECE_HEAD.pack(MAGIC, (1 if start == 0 else 2) << 29 | (offset - start)),
                    payload[start:offset]]
            start = offset + 4
    tail = len(payload) - start
    out += [_PIECE_HEAD.pack(MAGIC, (3 if start else 0) << 29 | tail), payload[start:],
            b"\0" * (_aligned(len(payload)) - len(payload))]
    return b"".join(out)


def decode_record(buffer: bytes | memoryview, path, where: str) -> bytes:
    """Reassemble one record from `buffer`, which starts at the record's first piece."""
    pieces = []
    position = 0
    while True:
        if position + 8 > len(buffer):
            raise DataFormatError(path, f"file ends inside a record header at byte +{position} "
                                        "(truncated .rec?)", where)
        magic, lrec = _PIECE_HEAD.unpack_from(buffer, position)
        if magic != MAGIC:
            raise DataFormatError(path, f"no RecordIO magic at byte +{position} (found {magic:#010x}); "
                                        ".idx offset does not point at a record, or not a .rec file", where)
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        start = position + 8
        if start + length > len(buffer):
            raise DataFormatError(path, f"record needs {length} bytes but the file ends after "
                                        f"{len(buffer) - start} (truncated .rec?)", where)
        pieces.append(bytes(buffer[start:start + length]))
        position = start + _aligned(length)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(pieces)
        if cflag not in (1, 2) or (cflag == 1) != (len(pieces) == 1):
            raise DataFormatError(path, f"piece flag {cflag} out of sequence", where)


def pack_header(label, payload: bytes, record_id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + payload, as `mx.recordio.pack`: a scalar label or a float32 label array."""
    if np.isscalar(label):
        return IR_HEADER.pack(0, float(label), record_id, id2) + payload
    labels = np.asarray(label, dtype="<f4").ravel()
    return IR_HEADER.pack(labels.size, 0.0, record_id, id2) + labels.tobytes() + payload


def unpack_header(record: bytes, path, where: str) -> tuple[float | np.ndarray, bytes]:
    """(label, payload) of a record; label is a float or a float32 array."""
    if len(record) < IR_HEADER.size:
        raise DataFormatError(path, f"record of {len(record)} bytes is shorter than its 24-byte header", where)
    flag, label, _, _ = IR_HEADER.unpack_from(record)
    body = IR_HEADER.size
    if flag == 0:
        return label, record[body:]
    end = body + 4 * flag
    if end > len(record):
        raise DataFormatError(path, f"header announces {flag} labels but the record has "
                                    f"{len(record) - body} bytes after its header", where)
    return np.frombuffer(record, dtype="<f4", count=flag, offset=body).copy(), record[end:]


def read_index(idx_path) -> tuple[np.ndarray, np.ndarray]:
    """(keys int64, offsets int64) from a `.idx` file, in file order."""
    keys, offsets = [], []
    try:
        with open(idx_path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    if len(fields) != 2:
                        raise ValueError
                    keys.append(int(fields[0]))
                    offsets.append(int(fields[1]))
                except ValueError:
                    raise DataFormatError(idx_path, f"expected 'key<TAB>offset', got {line.strip()!r}",
                                          f"line {line_number}") from None
    except FileNotFoundError:
        raise DataFormatError(idx_path, "index file not found") from None
    except UnicodeDecodeError:
        raise DataFormatError(idx_path, "not a text .idx file") from None
    if not keys:
        raise DataFormatError(idx_path, "index file is empty")
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


# ---------------------------------------------------------------- reading packs

def resolve_pack(path) -> tuple[str, str, str]:
    """(rec, idx, property) paths for a pack folder, a common prefix, or the .rec file itself."""
    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = os.path.join(path, "train")
    elif path.endswith((".rec", ".idx")):
        prefix = path[:-4]
    else:
        prefix = path
    folder = os.path.dirname(prefix) or "."
    return prefix + ".rec", prefix + ".idx", os.path.join(folder, "property")


def read_property(property_path) -> tuple[int, int, int] | None:
    """(num_classes, height, width) from insightface's `property` file, or None if there is none."""
    if not os.path.exists(property_path):
        return None
    with open(property_path, encoding="utf-8") as handle:
        text = handle.read().strip()
    try:
        classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise DataFormatError(property_path, f"expected 'num_classes,height,width', got {text!r}",
                              "line 1") from None
    return classes, height, width


class RecordDataset:
    """Random access to the images of a `.rec/.idx` pack: `ds[i] -> (RGB uint8 HWC, int label)`.

    `path` is the pack's folder (holding train.rec/train.idx), their common prefix, or the .rec.
    Each process opens its own file handle on first use (DataLoader workers included) and reads a
    record with one positioned read, so indexing is safe from workers and threads.
    `on_size_mismatch`: 'error' refuses images that are not 112x112, 'resize' resizes them.
    `skip_corrupt`: a record that fails to read or decode is replaced by the next good one and
    reported (a warning naming it, and `skipped`, the indices skipped in this process).
    """

    def __init__(self, path, on_size_mismatch: str = "error", skip_corrupt: bool = False):
        check_size_policy(on_size_mismatch)
        self.rec_path, self.idx_path, property_path = resolve_pack(path)
        if not os.path.exists(self.rec_path):
            raise DataFormatError(self.rec_path, "record file not found")
        self.on_size_mismatch = on_size_mismatch
        self.skip_corrupt = skip_corrupt
        self.skipped: list[int] = []
        self.file_size = os.path.getsize(self.rec_path)
        keys, offsets = read_index(self.idx_path)
        bad = np.flatnonzero((offsets < 0) | (offsets + 8 > self.file_size))
        if bad.size:
            raise DataFormatError(self.idx_path, f"offset {offsets[bad[0]]} of key {keys[bad[0]]} lies past "
                                                 f"the end of {self.rec_path} ({self.file_size} bytes)",
                                  f"line {bad[0] + 1}")
        self._offset_of = dict(zip(keys.tolist(), offsets.tolist()))
        # A record ends where the next one (in file order) starts: one read fetches it whole.
        ends = np.sort(offsets)
        self._end_of = dict(zip(ends.tolist(), ends[1:].tolist() + [self.file_size]))
        self._fd = None
        self._fd_pid = None
        self.header_range = None
        first_label, first_payload = self.read_raw(int(keys.min()))
        # insightface tests only `flag > 0`; requiring an empty payload too keeps a no-header pack
        # whose first image carries a label array from losing that image.
        if (0 in self._offset_of and not np.isscalar(first_label) and first_label.size >= 2
                and not first_payload):
            self.header_range = (int(first_label[0]), int(first_label[1]))
            self.keys = np.arange(1, self.header_range[0], dtype=np.int64)
            missing = [k for k in (1, self.header_range[0] - 1) if k not in self._offset_of]
            if missing:
                raise DataFormatError(self.idx_path, f"header record says images are keys 1.."
                                                     f"{self.header_range[0] - 1} but key {missing[0]} is not indexed")
        else:
            self.keys = np.sort(keys)
        properties = read_property(property_path)
        self.property_path = property_path
        self.num_classes = properties[0] if properties else None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = state["_fd_pid"] = None  # a worker opens its own handle
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def _handle(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    def _read_bytes(self, offset: int, limit: int | None = None) -> bytes:
        """The record starting at `offset`, or its first `limit` bytes."""
        size = self._end_of[offset] - offset
        return os.pread(self._handle(), size if limit is None else min(size, limit), offset)

    def read_raw(self, key: int) -> tuple[float | np.ndarray, bytes]:
        """(label, payload bytes) of the record stored under `key`."""
        offset = self._offset_of[key]
        where = f"record key {key} at byte {offset}"
        return unpack_header(decode_record(self._read_bytes(offset), self.rec_path, where), self.rec_path, where)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        key = int(self.keys[index])
        label, payload = self.read_raw(key)
        where = f"record key {key}"
        class_id = label if np.isscalar(label) else (label[0] if label.size else np.nan)
        if not np.isfinite(class_id) or class_id < 0 or class_id != int(class_id):
            raise DataFormatError(self.rec_path, f"label {label!r} is not a class index", where)
        image = check_size(decode_image(payload, self.rec_path, where), self.on_size_mismatch,
                           self.rec_path, where)
        return image, int(class_id)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.rec_path}")
        index %= len(self)
        if not self.skip_corrupt:
            return self.load(index)
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            try:
                return self.load(candidate)
            except DataFormatError as error:
                self.skipped.append(candidate)
                warnings.warn(f"skipping corrupt record: {error}", stacklevel=2)
        raise DataFormatError(self.rec_path, "no readable image record in the pack")

    def labels(self) -> np.ndarray:
        """The class of every image, read from the record headers only (a 36-byte read per record,
        no decoding); a label that is not a class index is a DataFormatError naming its record."""
        out = np.empty(len(self), dtype=np.int64)
        head_size = _PIECE_HEAD.size + IR_HEADER.size + 4  # piece head, IRHeader, first label of an array
        for i, key in enumerate(self.keys.tolist()):
            offset = self._offset_of[key]
            head = self._read_bytes(offset, head_size)
            magic, lrec = _PIECE_HEAD.unpack_from(head) if len(head) >= 8 else (None, 0)
            if magic == MAGIC and lrec >> 29 in (0, 1) and (lrec & _LENGTH_MASK) >= head_size - 8 \
                    and len(head) == head_size:
                flag, label, _, _ = IR_HEADER.unpack_from(head, _PIECE_HEAD.size)
                if flag:
                    label = struct.unpack_from("<f", head, _PIECE_HEAD.size + IR_HEADER.size)[0]
            else:  # a short first piece, a magic word inside the header, a damaged record: the full read
                label, _ = self.read_raw(key)
                label = label if np.isscalar(label) else (label[0] if label.size else np.nan)
            if not np.isfinite(label) or label < 0 or label != int(label):
                raise DataFormatError(self.rec_path, f"label {label!r} is not a class index", f"record key {key}")
            out[i] = int(label)
        return out


# ---------------------------------------------------------------- writing packs

class RecordWriter:
    """Writes `.rec` + `.idx` that MXNet's `MXIndexedRecordIO` reads back (and so do we)."""

    def __init__(self, rec_path, idx_path):
        self.rec_path = os.fspath(rec_path)
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="utf-8")

    def write(self, key: int, record: bytes) -> None:
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(encode_record(record))

    def rewrite_first(self, record: bytes) -> None:
        """Overwrite record 0 in place with one of the same encoded size (a header written last)."""
        position = self._rec.tell()
        self._rec.seek(0)
        self._rec.write(encode_record(record))
        self._rec.seek(position)

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_record_pack(out_dir, samples: Iterable[tuple[np.ndarray | bytes, int]], num_classes: int,
                      quality: int = 95, total: int | None = None, image_format: str = ".jpg") -> int:
    """Pack (image, label) samples into `out_dir/train.rec`, `train.idx`, `property`.

    An image is an RGB uint8 112x112 array (encoded here, JPEG at `quality` or PNG with
    image_format='.png') or already-encoded bytes (stored as they are: no second JPEG generation).

    insightface's layout: record 0 is a header, images are keys 1..N, then one record per identity
    holding its [start, end) key range, written when each identity's images came contiguously (as
    they do from an image list sorted by label); otherwise the header alone. Files are written under
    temporary names and renamed at the end, so an interrupted run leaves no half pack behind.
    Returns the number of images written.
    """
    os.makedirs(out_dir, exist_ok=True)
    final = [os.path.join(out_dir, name) for name in ("train.rec", "train.idx", "property")]
    temporary = [partial_path(name) for name in final]
    try:
        ranges: dict[int, list[int]] = {}
        contiguous = True
        previous = None
        count = 0
        with RecordWriter(temporary[0], temporary[1]) as writer:
            # The header's contents depend on the whole pack: a placeholder of the same size holds key
            # 0's place at the start and is overwritten in place once the image count is known.
            writer.write(0, pack_header(np.zeros(2), b""))
            for image, label in tqdm(samples, total=total, desc="packing", unit="img"):
                label = int(label)
                if not 0 <= label < num_classes:
                    raise ValueError(f"label {label} of sample {count} is outside 0..{num_classes - 1}")
                count += 1
                if isinstance(image, (bytes, bytearray)):
                    payload = bytes(image)
                else:
                    payload = encode_image(image, quality, image_format)
                writer.write(count, pack_header(float(label), payload, count))
                if label in ranges and label != previous:
                    contiguous = False
                ranges.setdefault(label, [count, count])[1] = count + 1
                previous = label
            first_identity_key = count + 1
            end_key = first_identity_key
            if contiguous:
                for label in sorted(ranges):
                    writer.write(end_key, pack_header(np.asarray(ranges[label], dtype=np.float32), b"", end_key))
                    end_key += 1
            writer.rewrite_first(pack_header(np.asarray([first_identity_key, end_key]), b""))
        with open(temporary[2], "w", encoding="utf-8") as handle:
            handle.write(f"{num_classes},{IMAGE_SIZE[0]},{IMAGE_SIZE[1]}\n")
    except BaseException:
        for name in temporary:
            if os.path.exists(name):
                os.remove(name)
        raise
    for source, target in zip(temporary, final):
        commit(source, target)
    return count
