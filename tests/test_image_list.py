import cv2
import numpy as np
import pytest

from dataset import (DataFormatError, ImageListDataset, ImageSequence, image_files, read_image_list, read_lfw_pairs,
                     read_pair_list, read_pairs, scan_image_tree, write_image_list, write_pair_list)


def save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def solid(value) -> np.ndarray:
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    image[..., 0] = value  # red channel only: a BGR/RGB swap would show
    return image


def test_image_folder_labels_are_sorted_identity_ranks(tmp_path):
    for identity, value in (("bob", 10), ("alice", 20)):
        for n in range(2):
            save(tmp_path / identity / f"{n}.png", solid(value + n))
    (tmp_path / "alice" / "notes.txt").write_text("ignored")
    data = ImageListDataset(tmp_path)
    assert data.identities == ["alice", "bob"] and data.num_classes == 2
    assert data.paths == ["alice/0.png", "alice/1.png", "bob/0.png", "bob/1.png"]
    image, label = data[2]
    assert label == 1 and image[0, 0].tolist() == [10, 0, 0]


def test_image_list_round_trip_with_spaces_in_paths(tmp_path):
    save(tmp_path / "a b" / "x.png", solid(5))
    write_image_list(tmp_path / "list.txt", ["a b/x.png"], [3])
    data = ImageListDataset(tmp_path, tmp_path / "list.txt")
    assert len(data) == 1 and data[0][1] == 3 and data.num_classes == 4


@pytest.mark.parametrize("line, message", [
    ("justapath", r"line 2: expected 'relative/path label'"),
    ("img.png seven", r"line 2: label 'seven' is not an integer"),
    ("img.png -1", r"line 2: label -1 is negative"),
])
def test_bad_list_lines_are_named(tmp_path, line, message):
    (tmp_path / "list.txt").write_text(f"ok.png 0\n{line}\n")
    with pytest.raises(DataFormatError, match=message):
        read_image_list(tmp_path / "list.txt")


def test_missing_and_unreadable_inputs(tmp_path):
    with pytest.raises(DataFormatError, match="list.txt: list file not found"):
        read_image_list(tmp_path / "list.txt")
    with pytest.raises(DataFormatError, match="image folder not found"):
        ImageListDataset(tmp_path / "nowhere")
    (tmp_path / "list.txt").write_text("gone.png 0\n")
    with pytest.raises(DataFormatError, match="gone.png: cannot read image file"):
        ImageListDataset(tmp_path, tmp_path / "list.txt")[0]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "list2.txt").write_text("bad.png 0\n")
    with pytest.raises(DataFormatError, match="bad.png, whole file: payload of 9 bytes is not a decodable image"):
        ImageListDataset(tmp_path, tmp_path / "list2.txt")[0]


def test_wrong_size_file_is_refused_or_resized(tmp_path):
    save(tmp_path / "id" / "big.png", np.zeros((100, 90, 3), dtype=np.uint8))
    with pytest.raises(DataFormatError, match="image is 100x90, expected 112x112"):
        ImageListDataset(tmp_path)[0]
    assert ImageListDataset(tmp_path, on_size_mismatch="resize")[0][0].shape == (112, 112, 3)


def test_lfw_pairs_txt_both_line_kinds(tmp_path):
    (tmp_path / "pairs.txt").write_text("10\t300\nAbel_Pacheco\t1\t4\nAbel_Pacheco\t1\tAkhmed_Zakayev\t3\n")
    pairs, issame = read_lfw_pairs(tmp_path / "pairs.txt")
    assert pairs == [("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg"),
                     ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg")]
    assert issame.tolist() == [True, False]
    assert read_pairs(tmp_path / "pairs.txt")[0] == pairs
    (tmp_path / "bad.txt").write_text("10 300\nname 1 x\n")
    with pytest.raises(DataFormatError, match=r"bad.txt, line 2: expected 'name n1 n2'"):
        read_lfw_pairs(tmp_path / "bad.txt")


def test_left_right_flag_list(tmp_path):
    write_pair_list(tmp_path / "p.txt", [("a/1.jpg", "a/2.jpg"), ("a/1.jpg", "b/1.jpg")], [True, False])
    assert (tmp_path / "p.txt").read_text() == "a/1.jpg a/2.jpg 1\na/1.jpg b/1.jpg -1\n"
    pairs, issame = read_pairs(tmp_path / "p.txt")
    assert pairs[1] == ("a/1.jpg", "b/1.jpg") and issame.tolist() == [True, False]
    (tmp_path / "q.txt").write_text("x.jpg y.jpg 0\nx.jpg y.jpg maybe\n")
    with pytest.raises(DataFormatError, match=r"q.txt, line 2: expected 'left right flag'"):
        read_pair_list(tmp_path / "q.txt")


def test_pair_images_come_in_bin_order(tmp_path):
    for name, value in (("l.png", 1), ("r.png", 2)):
        save(tmp_path / name, solid(value))
    pairs = [("l.png", "r.png"), ("r.png", "l.png")]
    images = image_files(tmp_path, [relative for pair in pairs for relative in pair], "the pairs")[:]
    assert images[:, 0, 0, 0].tolist() == [1, 2, 2, 1]


def test_image_files_name_the_first_missing_file_before_decoding(tmp_path):
    save(tmp_path / "here.png", solid(3))
    with pytest.raises(DataFormatError, match=r"gone.png: image file listed in pairs.txt not found "
                                              r"\(1 of 2 images are missing\)"):
        image_files(tmp_path, ["here.png", "gone.png"], "pairs.txt")


def test_image_sequence_reads_any_item_and_checks_the_crop_size(tmp_path):
    """read_one is pluggable (here: a drawn image per number); the sequence enforces 112x112."""
    def read_one(number):
        return np.full((112 if number < 10 else 120, 112, 3), number, np.uint8)

    images = ImageSequence(range(4), read_one, locate=lambda number: ("drawn", f"number {number}"))
    assert len(images) == 4 and images[1:3].shape == (2, 112, 112, 3) and images[1:3].dtype == np.uint8
    assert images[1:3][:, 0, 0, 0].tolist() == [1, 2] and images[3].shape == (112, 112, 3)
    assert images[4:].shape == (0, 112, 112, 3)
    wrong = ImageSequence([5, 11], read_one, locate=lambda number: ("drawn", f"number {number}"))
    with pytest.raises(DataFormatError, match="drawn, number 11: image is 120x112, expected 112x112"):
        wrong[:]
    resized = ImageSequence([5, 11], read_one, on_size_mismatch="resize")[:]
    assert resized.shape == (2, 112, 112, 3) and resized[1, 0, 0, 0] == 11


def test_image_tree_lists_images_at_every_depth(tmp_path):
    for relative in ("top.png", "a/b/deep.jpg", "a/mid.PNG"):
        save(tmp_path / relative, solid(1))
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    assert scan_image_tree(tmp_path) == ["a/b/deep.jpg", "a/mid.PNG", "top.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty: no images .* in the folder tree"):
        scan_image_tree(tmp_path / "empty")
