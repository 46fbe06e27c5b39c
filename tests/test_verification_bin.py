import pickle
import struct

import cv2
import numpy as np
import pytest

from dataset import DataFormatError, load_bin, read_bin_payloads, write_bin


def smooth_images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 7, 7, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (112, 112), interpolation=cv2.INTER_CUBIC) for s in small])


def png(image) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def python2_pickle(payloads, issame) -> bytes:
    """What Python 2's pickle.dump((bins, issame_list), f, protocol=2) writes: str payloads as
    BINSTRING ('T') opcodes, bools as NEWTRUE/NEWFALSE, built opcode by opcode."""
    out = [b"\x80\x02", b"]", b"("]  # PROTO 2, EMPTY_LIST, MARK
    for payload in payloads:
        out.append(b"T" + struct.pack("<I", len(payload)) + payload)
    out.append(b"e")  # APPENDS
    out += [b"]", b"("] + [b"\x88" if flag else b"\x89" for flag in issame] + [b"e"]
    out.append(b"\x86.")  # TUPLE2, STOP
    return b"".join(out)


def test_write_then_load_round_trip(tmp_path):
    images = smooth_images(6)
    issame = np.array([True, False, True])
    write_bin(tmp_path / "t.bin", images, issame)
    loaded, loaded_issame = load_bin(tmp_path / "t.bin")
    assert loaded.shape == (6, 112, 112, 3) and loaded.dtype == np.uint8
    assert loaded_issame.tolist() == [True, False, True]
    assert np.abs(loaded.astype(int) - images).mean() < 3
    bins, issame_list = pickle.load(open(tmp_path / "t.bin", "rb"))  # the insightface layout itself
    assert isinstance(bins, list) and isinstance(bins[0], bytes) and issame_list == [True, False, True]


def test_python2_bin_with_str_payloads_loads(tmp_path):
    images = smooth_images(4, seed=1)
    (tmp_path / "py2.bin").write_bytes(python2_pickle([png(i) for i in images], [True, False]))
    loaded, issame = load_bin(tmp_path / "py2.bin")
    np.testing.assert_array_equal(loaded, images)
    assert issame.tolist() == [True, False]


def test_numpy_bool_issame_array_is_admitted(tmp_path):
    images = smooth_images(2)
    with open(tmp_path / "np.bin", "wb") as handle:
        pickle.dump(([png(i) for i in images], np.array([True])), handle)
    assert load_bin(tmp_path / "np.bin")[1].tolist() == [True]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    evil = b"cos\nsystem\n(S'" + command + b"'\ntR."
    (tmp_path / "evil.bin").write_bytes(evil)
    with pytest.raises(DataFormatError, match=r"evil.bin: refusing to load: the pickle names the global os.system"):
        load_bin(tmp_path / "evil.bin")
    assert not marker.exists()


def test_bad_bins_are_named(tmp_path):
    with pytest.raises(DataFormatError, match="missing.bin: verification file not found"):
        load_bin(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataFormatError, match="junk.bin: not a verification .bin pickle"):
        load_bin(tmp_path / "junk.bin")
    good = pickle.dumps(([png(i) for i in smooth_images(4)], [True, False]))
    (tmp_path / "cut.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFormatError, match="cut.bin: not a verification .bin pickle"):
        load_bin(tmp_path / "cut.bin")
    with open(tmp_path / "odd.bin", "wb") as handle:
        pickle.dump(([png(i) for i in smooth_images(3)], [True, False]), handle)
    with pytest.raises(DataFormatError, match="3 images for 2 pairs"):
        load_bin(tmp_path / "odd.bin")
    with open(tmp_path / "text.bin", "wb") as handle:
        pickle.dump(([b"not an image", png(smooth_images(1)[0])], [True]), handle)
    with pytest.raises(DataFormatError, match=r"text.bin, image 0 \(pair 0\): payload of 12 bytes is not a decodable image"):
        load_bin(tmp_path / "text.bin")


def test_wrong_size_in_bin_is_refused_or_resized(tmp_path):
    big = [cv2.resize(i, (96, 112)) for i in smooth_images(2)]
    with open(tmp_path / "big.bin", "wb") as handle:
        pickle.dump(([png(i) for i in big], [False]), handle)
    with pytest.raises(DataFormatError, match="image 0 .*image is 112x96, expected 112x112"):
        load_bin(tmp_path / "big.bin")
    assert load_bin(tmp_path / "big.bin", on_size_mismatch="resize")[0].shape == (2, 112, 112, 3)


def test_payloads_can_be_read_without_decoding(tmp_path):
    images = smooth_images(2)
    write_bin(tmp_path / "t.bin", images, [True])
    payloads, issame = read_bin_payloads(tmp_path / "t.bin")
    assert payloads[0][:2] == b"\xff\xd8" and issame.tolist() == [True]
