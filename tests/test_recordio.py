import os
import struct

import cv2
import numpy as np
import pytest
import torch

from dataset import DataFormatError, RecordDataset, TrainingView, write_record_pack
from dataset.recordio import decode_record, encode_record, pack_header, read_index

MAGIC = 0xCED7230A


def face_like(seed: int) -> np.ndarray:
    """A smooth RGB image: survives JPEG well enough to compare decoded pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
    return cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)


def png_bytes(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def spec_piece(payload: bytes, cflag: int) -> bytes:
    """One piece written from the format's description: magic, cflag<<29|length, data, pad to 4."""
    padding = (-len(payload)) % 4
    return struct.pack("<II", MAGIC, cflag << 29 | len(payload)) + payload + b"\0" * padding


def spec_irheader(label, body: bytes, record_id: int) -> bytes:
    if isinstance(label, float):
        return struct.pack("<IfQQ", 0, label, record_id, 0) + body
    return struct.pack("<IfQQ", len(label), 0.0, record_id, 0) + struct.pack(f"<{len(label)}f", *label) + body


def write_spec_pack(folder, records) -> None:
    """records: [(key, payload)] written byte by byte as whole (cflag 0) records."""
    os.makedirs(folder, exist_ok=True)
    offset = 0
    with open(os.path.join(folder, "train.rec"), "wb") as rec, open(os.path.join(folder, "train.idx"), "w") as idx:
        for key, payload in records:
            idx.write(f"{key}\t{offset}\n")
            piece = spec_piece(payload, 0)
            rec.write(piece)
            offset += len(piece)


def test_reads_an_insightface_pack_built_from_the_spec(tmp_path):
    images = [face_like(i) for i in range(5)]
    classes = [0, 0, 1, 1, 1]
    records = [(0, spec_irheader([6.0, 8.0], b"", 0))]
    records += [(i + 1, spec_irheader(float(c), png_bytes(img), i + 1)) for i, (img, c) in enumerate(zip(images, classes))]
    records += [(6, spec_irheader([1.0, 3.0], b"", 6)), (7, spec_irheader([3.0, 6.0], b"", 7))]
    write_spec_pack(tmp_path, records)
    pack = RecordDataset(tmp_path)
    assert len(pack) == 5 and pack.header_range == (6, 8)
    for i in range(5):
        image, label = pack[i]
        assert label == classes[i] and image.dtype == np.uint8
        np.testing.assert_array_equal(image, images[i])  # PNG is lossless: exact RGB back
    assert pack.labels().tolist() == classes


def test_reads_a_pack_without_header_and_with_label_arrays(tmp_path):
    images = [face_like(10 + i) for i in range(3)]
    # im2rec-style: keys start at 0, no header record, images carry a label array [class, extra]
    records = [(i, spec_irheader([float(i + 4), 0.5], png_bytes(img), i)) for i, img in enumerate(images)]
    write_spec_pack(tmp_path / "pack", records)
    pack = RecordDataset(tmp_path / "pack" / "train.rec")
    assert pack.header_range is None and len(pack) == 3
    assert [pack[i][1] for i in range(3)] == [4, 5, 6]
    np.testing.assert_array_equal(pack[2][0], images[2])


def test_multi_piece_record_is_reassembled_and_written_as_dmlc_does():
    # The magic word at 4-aligned offsets 4 and 12 splits the record into three pieces.
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"xyz"
    expected = spec_piece(b"abcd", 1) + spec_piece(b"efgh", 2) + spec_piece(b"xyz", 3)
    assert encode_record(payload) == expected
    assert decode_record(expected, "mem", "test") == payload
    # An unaligned magic does not split.
    unaligned = b"ab" + magic + b"cd"
    assert encode_record(unaligned) == spec_piece(unaligned, 0)


def test_pack_round_trip_with_identity_records(tmp_path):
    images = [face_like(20 + i) for i in range(7)]
    labels = [0, 0, 1, 2, 2, 2, 3]
    count = write_record_pack(tmp_path, zip(images, labels), num_classes=4, image_format=".png")
    assert count == 7
    pack = RecordDataset(tmp_path)
    assert pack.num_classes == 4 and pack.header_range == (8, 12)
    for i, (image, label) in enumerate(zip(images, labels)):
        got_image, got_label = pack[i]
        assert got_label == label
        np.testing.assert_array_equal(got_image, image)
    # identity records hold each class's [start, end) key range
    assert [pack.read_raw(8 + c)[0].tolist() for c in range(4)] == [[1, 3], [3, 4], [4, 7], [7, 8]]
    assert open(tmp_path / "property").read().strip() == "4,112,112"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]


def test_unsorted_labels_get_a_header_but_no_identity_records(tmp_path):
    write_record_pack(tmp_path, zip([face_like(i) for i in range(3)], [1, 0, 1]), num_classes=2)
    pack = RecordDataset(tmp_path)
    assert pack.header_range == (4, 4) and [pack[i][1] for i in range(3)] == [1, 0, 1]


def test_jpeg_payloads_decode_close_to_the_source(tmp_path):
    image = face_like(3)
    write_record_pack(tmp_path, [(image, 0)], num_classes=1, quality=95)
    decoded, _ = RecordDataset(tmp_path)[0]
    assert np.abs(decoded.astype(int) - image).mean() < 3  # RGB kept in order: a swap would be far off


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataFormatError, match="train.rec: record file not found"):
        RecordDataset(tmp_path)
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(DataFormatError, match="train.idx: index file not found"):
        RecordDataset(tmp_path)


def test_truncated_rec_names_the_record(tmp_path):
    write_record_pack(tmp_path, zip([face_like(i) for i in range(3)], [0, 1, 2]), num_classes=3)
    rec = tmp_path / "train.rec"
    offsets = dict(zip(*[a.tolist() for a in read_index(tmp_path / "train.idx")]))
    rec.write_bytes(rec.read_bytes()[:offsets[3] + 100])  # cut inside image record 3
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items() if k <= 3))
    pack = RecordDataset(tmp_path)
    pack[1]
    with pytest.raises(DataFormatError, match=r"record key 3 at byte \d+: record needs \d+ bytes but the file ends"):
        pack[2]


def test_idx_offset_past_the_end_is_refused_with_its_line(tmp_path):
    write_record_pack(tmp_path, [(face_like(0), 0)], num_classes=1)
    size = os.path.getsize(tmp_path / "train.rec")
    with open(tmp_path / "train.idx", "a") as idx:
        idx.write(f"9\t{size + 40}\n")
    with pytest.raises(DataFormatError, match=r"train.idx, line 4: offset \d+ of key 9 lies past the end"):
        RecordDataset(tmp_path)


def test_malformed_idx_line_is_named(tmp_path):
    write_record_pack(tmp_path, [(face_like(0), 0)], num_classes=1)
    (tmp_path / "train.idx").write_text("0\t0\nnot-a-key\n")
    with pytest.raises(DataFormatError, match=r"train.idx, line 2: expected 'key<TAB>offset'"):
        RecordDataset(tmp_path)


def test_offset_that_misses_a_record_is_named(tmp_path):
    write_record_pack(tmp_path, [(face_like(0), 0), (face_like(1), 0)], num_classes=1)
    keys, offsets = read_index(tmp_path / "train.idx")
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{o + (4 if k == 2 else 0)}\n" for k, o in zip(keys, offsets)))
    with pytest.raises(DataFormatError, match="record key 2 .*no RecordIO magic"):
        RecordDataset(tmp_path)[1]


def test_record_that_is_not_an_image_is_refused_or_skipped(tmp_path):
    records = [(0, spec_irheader([4.0, 4.0], b"", 0)),
               (1, spec_irheader(0.0, png_bytes(face_like(0)), 1)),
               (2, spec_irheader(1.0, b"this is not an image", 2)),
               (3, spec_irheader(2.0, png_bytes(face_like(2)), 3))]
    write_spec_pack(tmp_path, records)
    with pytest.raises(DataFormatError, match="record key 2: payload of 20 bytes is not a decodable image"):
        RecordDataset(tmp_path)[1]
    tolerant = RecordDataset(tmp_path, skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipping corrupt record.*record key 2"):
        image, label = tolerant[1]
    assert label == 2 and tolerant.skipped == [1]
    assert [tolerant[i][1] for i in (0, 2)] == [0, 2] and tolerant.skipped == [1]


def test_wrong_image_size_is_refused_or_resized(tmp_path):
    big = cv2.resize(face_like(5), (120, 130))
    write_spec_pack(tmp_path, [(0, spec_irheader(0.0, png_bytes(big), 0))])
    with pytest.raises(DataFormatError, match="record key 0: image is 130x120, expected 112x112"):
        RecordDataset(tmp_path)[0]
    image, _ = RecordDataset(tmp_path, on_size_mismatch="resize")[0]
    assert image.shape == (112, 112, 3)


def test_non_integer_label_is_refused(tmp_path):
    write_spec_pack(tmp_path, [(0, spec_irheader(1.5, png_bytes(face_like(0)), 0))])
    with pytest.raises(DataFormatError, match="label 1.5 is not a class index"):
        RecordDataset(tmp_path)[0]


def test_dataloader_with_two_workers_reads_every_image_once(tmp_path):
    images = [face_like(30 + i) for i in range(24)]
    write_record_pack(tmp_path, zip(images, [i // 4 for i in range(24)]), num_classes=6, image_format=".png")
    view = TrainingView(RecordDataset(tmp_path), flip=False)
    loader = torch.utils.data.DataLoader(view, batch_size=5, num_workers=2, shuffle=False)
    batches = list(loader)
    stacked = torch.cat([b[0] for b in batches])
    assert stacked.shape == (24, 3, 112, 112) and stacked.dtype == torch.uint8
    np.testing.assert_array_equal(stacked.permute(0, 2, 3, 1).numpy(), np.stack(images))
    assert torch.cat([b[1] for b in batches]).tolist() == [i // 4 for i in range(24)]


def test_pack_header_matches_mxnet_struct_layout():
    assert pack_header(3.0, b"xy", 7) == struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"xy"
    assert pack_header([1.0, 2.0], b"", 0) == struct.pack("<IfQQ2f", 2, 0.0, 0, 0, 1.0, 2.0)
