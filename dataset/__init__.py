"""Face data without MXNet: insightface .rec/.idx packs, verification .bin files, image lists and
folders, pair lists, and synthetic face identities. Every reader yields RGB uint8 HWC 112x112.
Raw photos get there through detect_faces (MTCNN) and align_face."""

import os

from .align import ARCFACE_TEMPLATE, align_face, five_points, similarity_transform
from .augment import TrainingView, decode_bad_records, encode_bad_records, flip_coin, normalize_images
from .detect import detect_faces, face_sizes, largest_face
from .errors import DataFormatError
from .image_codec import decode_image, encode_image, read_image_file
from .image_list import (ImageListDataset, image_files, read_image_list, read_lfw_pairs, read_pair_list,
                         read_pairs, read_text_lines, scan_image_folder, scan_image_tree, write_image_list,
                         write_pair_list)
from .image_sequence import ImageSequence
from .recordio import RecordDataset, RecordWriter, read_property, write_record_pack
from .verification_bin import load_bin, open_bin, read_bin_payloads, write_bin


def open_training_set(path, root: str = ""):
    """A training source by what `path` is: a .rec/.idx pack (its folder, prefix or .rec), an image
    folder with one sub-folder per identity, or a `path label` list (relative to `root`, default
    the list's folder). Bad records are handled by the TrainingView over it (skip_corrupt)."""
    path = os.fspath(path)
    if os.path.exists(path + ".rec") or path.endswith(".rec") or os.path.exists(os.path.join(path, "train.rec")):
        return RecordDataset(path)
    if os.path.isdir(path):
        return ImageListDataset(path)
    if os.path.isfile(path):
        return ImageListDataset(root or os.path.dirname(os.path.abspath(path)), path)
    raise DataFormatError(path, "training data not found: expected a .rec/.idx pack, an image folder or a list file")
