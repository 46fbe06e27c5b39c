"""Face data without MXNet: insightface .rec/.idx packs, verification .bin files, image lists and
folders, pair lists, and synthetic face identities. Every reader yields RGB uint8 HWC 112x112."""

from .augment import TrainingView, flip_coin, normalize_images
from .errors import DataFormatError, run_cli
from .image_codec import decode_image, encode_image, read_image_file
from .image_list import (ImageListDataset, load_pair_images, read_image_list, read_lfw_pairs,
                         read_pair_list, read_pairs, scan_image_folder, write_image_list, write_pair_list)
from .recordio import RecordDataset, RecordWriter, read_property, write_record_pack
from .verification_bin import load_bin, read_bin_payloads, write_bin
