"""OpenCV's binary matrix header, as the MegaFace devkit's feature files and the old repository's
DeepGlint feature binary (its save_mat) write it: four little-endian int32, rows, cols, bytes per row
(or per element, in the devkit's one-column files) and the element type, 5 = CV_32F (float32)."""

import struct

MAT_HEADER = struct.Struct("<4i")
CV_32F = 5
