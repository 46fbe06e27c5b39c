"""MTCNN (dataset.detect, dataset.mtcnn) on a real photo, matplotlib's grace_hopper.jpg, and on
composites made from it with known transforms: scaled, rotated, mirrored, several faces on one
canvas, a face cut by the border. Landmarks are mapped through each transform and compared with what
the detector finds there; the building blocks are checked against the reference formulas written
out here (facenet-pytorch's detect_face.py, the original MTCNN code's conventions)."""

import math
import os
import sys

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from dataset import align_face
from dataset.detect import (Detector, area_resample, crop_bins, cumulative_sums, detect_faces, detector, face_sizes,
                            largest_face, level_size, nms, pack_levels, pyramid_scales, regress, square,
                            summed_area_table, window_boxes)
from dataset.mtcnn import WEIGHT_FILES, load_nets, weights_folder
from runtime import DataFormatError

PHOTO = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
# What facenet-pytorch 2.6.0 (MTCNN().detect(image, landmarks=True)) returns for the photo.
REFERENCE_BOX = [174.40216, 119.55546, 355.64822, 340.45700]
REFERENCE_SCORE = 0.99982446
REFERENCE_LANDMARKS = [[221.66608, 192.20593], [309.82889, 186.13043], [269.35681, 239.17368],
                       [232.65190, 279.64868], [306.63846, 275.92749]]
MIRROR_ORDER = [1, 0, 2, 4, 3]  # a mirror swaps left and right eye, left and right mouth corner


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The test machines have two shared cores; a second thread costs more than it gains there.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo():
    return cv2.cvtColor(cv2.imread(PHOTO), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def original(photo):
    boxes, scores, landmarks = detect_faces(photo, device="cpu")
    assert len(boxes) == 1
    return boxes[0], landmarks[0]


def detect(image):
    return detect_faces(image, device="cpu")


def warp(image, matrix, size, canvas=None):
    """`image` through the 2x3 `matrix` onto a (width, height) canvas, grey where nothing maps (or
    drawn over `canvas`)."""
    flags = cv2.INTER_AREA if abs(np.linalg.det(matrix[:, :2])) < 1 else cv2.INTER_LINEAR
    if canvas is not None:
        return cv2.warpAffine(image, matrix, size, dst=canvas, flags=flags, borderMode=cv2.BORDER_TRANSPARENT)
    return cv2.warpAffine(image, matrix, size, flags=flags, borderValue=(90, 90, 90))


def mapped(matrix, points):
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def eye_distance(landmarks):
    return float(np.linalg.norm(landmarks[1] - landmarks[0]))


def landmark_error(found, expected):
    """Largest landmark error as a fraction of the inter-ocular distance (the usual normalisation)."""
    return float(np.linalg.norm(found - expected, axis=1).max()) / eye_distance(expected)


def rotation(angle, scale, shift=(50, 20)):
    matrix = cv2.getRotationMatrix2D((256.0, 300.0), angle, scale)
    matrix[:, 2] += shift
    return matrix


# ============ weights and networks ============

def test_networks_load_the_shipped_weights_strictly():
    folder = weights_folder()
    for net, name in zip(load_nets(), WEIGHT_FILES):
        shipped = torch.load(os.path.join(folder, name), weights_only=True)
        assert list(net.state_dict()) == list(shipped)
        assert all(torch.equal(net.state_dict()[key], value) for key, value in shipped.items())
        assert not net.training
    # Located through importlib's finder: the package itself is never imported.
    assert "facenet_pytorch" not in sys.modules


def test_missing_or_foreign_weights_are_one_line_errors_naming_make_setup(tmp_path):
    with pytest.raises(DataFormatError, match="make setup") as missing:
        load_nets(tmp_path)
    assert "pnet.pt" in str(missing.value) and "\n" not in str(missing.value)
    shipped = torch.load(os.path.join(weights_folder(), "pnet.pt"), weights_only=True)
    torch.save({**shipped, "conv5.weight": torch.zeros(1)}, tmp_path / "pnet.pt")  # one key too many
    with pytest.raises(DataFormatError, match="not the MTCNN pnet state dict.*make setup"):
        load_nets(tmp_path)


def test_repeated_calls_reuse_one_detector():
    assert detector("cpu") is detector("cpu")
    assert isinstance(detector("cpu"), Detector)


# ============ the photo and its composites ============

def test_photo_gives_what_facenet_pytorch_gives(original, photo):
    boxes, scores, landmarks = detect(photo)
    assert boxes.dtype == scores.dtype == landmarks.dtype == np.float32
    assert boxes.shape == (1, 4) and scores.shape == (1,) and landmarks.shape == (1, 5, 2)
    np.testing.assert_allclose(boxes[0], REFERENCE_BOX, atol=0.05)
    np.testing.assert_allclose(scores[0], REFERENCE_SCORE, atol=1e-5)
    np.testing.assert_allclose(landmarks[0], REFERENCE_LANDMARKS, atol=0.05)


@pytest.mark.parametrize("angle, scale", [(-20, 0.45), (-10, 1.25), (12, 0.7), (20, 1.0)])
def test_landmarks_follow_scale_and_rotation(original, photo, angle, scale):
    matrix = rotation(angle, scale)
    boxes, _, landmarks = detect(warp(photo, matrix, (640, 680)))
    assert len(boxes) == 1
    expected = mapped(matrix, original[1])
    # O-Net is not rotation-equivariant: its points move by a few percent of the face at 20 degrees.
    assert landmark_error(landmarks[0], expected) < 0.15
    centre = mapped(matrix, [(original[0][:2] + original[0][2:]) / 2])[0]
    assert np.linalg.norm((boxes[0][:2] + boxes[0][2:]) / 2 - centre) < 0.15 * face_sizes(boxes)[0]
    assert face_sizes(boxes)[0] == pytest.approx(scale * face_sizes(original[0])[0], rel=0.2)


def test_mirrored_photo_swaps_left_and_right(original, photo):
    boxes, _, landmarks = detect(photo[:, ::-1])  # a view with a negative stride is fine too
    assert len(boxes) == 1
    expected = original[1][MIRROR_ORDER].astype(np.float64)
    expected[:, 0] = photo.shape[1] - 1 - expected[:, 0]
    assert landmark_error(landmarks[0], expected) < 0.08


def test_several_faces_on_one_canvas_are_all_found(original, photo):
    canvas = np.full((500, 900, 3), 60, dtype=np.uint8)
    placements = [cv2.getRotationMatrix2D((0, 0), a, s) + [[0, 0, x], [0, 0, y]]
                  for a, s, x, y in [(0, 0.5, 0, 0), (15, 0.35, 350, 150), (-10, 0.7, 520, 40)]]
    for matrix in placements:
        warp(photo, matrix, (900, 500), canvas)
    boxes, scores, landmarks = detect(canvas)
    assert len(boxes) == 3
    assert np.all(np.diff(scores) <= 0)  # best first
    for matrix in placements:
        expected = mapped(matrix, original[1])
        errors = [landmark_error(found, expected) for found in landmarks]
        assert min(errors) < 0.15
    assert largest_face(boxes) == int(np.argmin([landmark_error(f, mapped(placements[2], original[1]))
                                                 for f in landmarks]))


@pytest.mark.parametrize("shift", [-150, -200])
def test_face_cut_by_the_border_is_found_where_it_is(original, photo, shift):
    matrix = np.float64([[1, 0, shift], [0, 1, 0]])
    boxes, _, landmarks = detect(warp(photo, matrix, (512, 600)))
    assert len(boxes) == 1
    assert landmark_error(landmarks[0], mapped(matrix, original[1])) < 0.1
    if shift == -200:
        assert boxes[0][0] < 0  # the box reaches past the border: the crops there were zero-padded


def blurred_centre(crop):
    """The central 80x80 of a crop, smoothed: the part that is face, compared at the scale alignment can promise."""
    return cv2.GaussianBlur(crop.astype(np.float64), (0, 0), 2)[16:96, 16:96]


def test_aligned_crops_agree_across_composites(original, photo):
    reference = blurred_centre(align_face(photo, original[1]))
    views = [warp(photo, rotation(a, s), (640, 680)) for a, s in [(-20, 0.45), (0, 1.3), (20, 0.8)]]
    views.append(np.ascontiguousarray(photo[:, ::-1]))
    for index, view in enumerate(views):
        _, _, landmarks = detect(view)
        crop = align_face(view, landmarks[0])
        if index == 3:
            crop = crop[:, ::-1]  # the mirror's crop, mirrored back
        centre = blurred_centre(crop)
        # O-Net's points at 20 degrees of roll are the least exact of these views.
        assert np.corrcoef(centre.ravel(), reference.ravel())[0, 1] > 0.95
        assert np.abs(centre - reference).mean() < 14
    # The comparison can tell: the crop aligned on points a tenth of the eye distance lower does not agree.
    off = blurred_centre(align_face(photo, original[1] + [0.0, 0.1 * eye_distance(original[1])]))
    assert np.corrcoef(off.ravel(), reference.ravel())[0, 1] < 0.93
    assert np.abs(off - reference).mean() > 18


@pytest.mark.parametrize("kind", ["grey", "black", "white", "noise", "tiny"])
def test_blank_and_noise_images_have_no_face(kind):
    image = {"grey": np.full((480, 640, 3), 128, np.uint8), "black": np.zeros((300, 400, 3), np.uint8),
             "white": np.full((300, 400, 3), 255, np.uint8), "tiny": np.full((15, 30, 3), 100, np.uint8),
             "noise": np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)}[kind]
    boxes, scores, landmarks = detect(image)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and landmarks.shape == (0, 5, 2)


def test_bad_inputs_are_clear_errors(photo):
    with pytest.raises(ValueError, match=r"RGB uint8 \[H, W, 3\].*\(600, 512\)"):
        detect(photo[:, :, 0])
    with pytest.raises(ValueError, match="float32"):
        detect(photo.astype(np.float32))
    with pytest.raises(ValueError, match="factor"):
        detect_faces(photo, factor=1.2, device="cpu")
    with pytest.raises(ValueError, match="thresholds"):
        detect_faces(photo, thresholds=(0.6, 0.7), device="cpu")
    with pytest.raises(ValueError, match="no face"):
        largest_face(np.zeros((0, 4)))


# ============ the building blocks against the reference formulas ============

def test_pyramid_scales_match_the_closed_form():
    for height, width, min_face in [(600, 512, 20), (480, 640, 40), (1080, 1920, 20), (13, 500, 12), (11, 11, 20)]:
        first = 12 / min_face
        # Levels k = 0, 1, ... while min(h, w) * first * 0.709^k >= 12.
        count = math.floor(math.log(12 / (min(height, width) * first)) / math.log(0.709)) + 1 \
            if min(height, width) * first >= 12 else 0
        np.testing.assert_allclose(pyramid_scales(height, width, min_face, 0.709),
                                   [first * 0.709 ** k for k in range(count)], rtol=1e-12)
    assert level_size(600, 512, 0.6) == (361, 308)  # int(h * scale + 1), as the reference sizes them


def test_pack_levels_places_every_level_apart_at_even_offsets():
    sizes = [level_size(600, 512, s) for s in pyramid_scales(600, 512)]
    offsets, (height, width) = pack_levels(sizes)
    taken = np.zeros((height, width), dtype=int)
    for (top, left), (level_h, level_w) in zip(offsets, sizes):
        assert top % 2 == 0 and left % 2 == 0
        taken[top:top + level_h, left:left + level_w] += 1
    assert taken.max() == 1 and taken.sum() == sum(h * w for h, w in sizes)
    assert height * width < 1.5 * sum(h * w for h, w in sizes)  # the packing wastes little


def test_packed_pyramid_scores_equal_pnet_on_each_level_alone(photo):
    """P-Net once over the packed canvas gives, at every cell whose window lies in a level, what P-Net
    gives on that level by itself (the reference runs one call per level)."""
    pnet = load_nets()[0]
    table = summed_area_table(photo, "cpu")
    scales = pyramid_scales(*photo.shape[:2])[:4]
    sizes = [level_size(*photo.shape[:2], s) for s in scales]
    offsets, canvas_size = pack_levels(sizes)
    canvas = torch.zeros((*canvas_size, 3))
    levels = []
    for (top, left), size in zip(offsets, sizes):
        level = (area_resample(table, np.array([[0, 0]]), np.array([[photo.shape[1], photo.shape[0]]]), size)[0]
                 - 127.5) * 0.0078125
        canvas[top:top + size[0], left:left + size[1]] = level
        levels.append(level)
    with torch.inference_mode():
        packed_offsets, packed = pnet(canvas.permute(2, 0, 1)[None])
        for (top, left), level in zip(offsets, levels):
            alone_offsets, alone = pnet(level.permute(2, 0, 1)[None])
            rows, cols = (level.shape[0] - 12) // 2 + 1, (level.shape[1] - 12) // 2 + 1  # whole windows only
            np.testing.assert_allclose(packed[0, top // 2:top // 2 + rows, left // 2:left // 2 + cols],
                                       alone[0, :rows, :cols], atol=1e-5)
            np.testing.assert_allclose(packed_offsets[0, :, top // 2:top // 2 + rows, left // 2:left // 2 + cols],
                                       alone_offsets[0, :, :rows, :cols], atol=1e-5)


def test_area_crops_equal_torch_area_interpolation_of_the_zero_padded_crop(photo):
    padded = np.zeros((photo.shape[0] + 200, photo.shape[1] + 200, 3), dtype=np.uint8)
    padded[100:-100, 100:-100] = photo
    table = summed_area_table(photo, "cpu")
    starts = np.array([[150, 100], [-60, -30], [400, 500], [10, 20]])  # inside, over two borders, ...
    lengths = np.array([[181, 181], [150, 150], [200, 190], [7, 7]])   # ..., and smaller than the output
    for size in (24, 48):
        crops = area_resample(table, starts, lengths, (size, size))
        for crop, (x, y), (w, h) in zip(crops, starts, lengths):
            region = torch.from_numpy(padded[y + 100:y + 100 + h, x + 100:x + 100 + w]).permute(2, 0, 1)[None].float()
            expected = torch.nn.functional.interpolate(region, size=(size, size), mode="area")[0].permute(1, 2, 0)
            np.testing.assert_allclose(crop, expected, atol=1e-3)
    big = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(cumulative_sums(torch.from_numpy(big), torch.int32), summed_area_table(big, "cpu"))


def test_crop_bins_are_adaptive_pooling_bins():
    starts, lengths = np.array([5, -3]), np.array([50, 7])
    first, end = crop_bins(starts, lengths, 24)
    for row, (start, n) in enumerate(zip(starts, lengths)):
        assert first[row].tolist() == [start + math.floor(k * n / 24) for k in range(24)]
        assert end[row].tolist() == [start + math.ceil((k + 1) * n / 24) for k in range(24)]


def test_window_boxes_match_the_reference_formula():
    rows, cols, scale = np.array([0, 3, 10]), np.array([0, 7, 2]), 0.3546
    boxes = window_boxes(rows, cols, scale)
    for box, row, col in zip(boxes, rows, cols):
        # generateBoundingBox: q1 = floor((stride * cell + 1) / scale), q2 = floor((stride * cell + cellsize) / scale)
        assert box.tolist() == [math.floor((2 * col + 1) / scale), math.floor((2 * row + 1) / scale),
                                math.floor((2 * col + 12) / scale), math.floor((2 * row + 12) / scale)]


def test_regress_and_square_match_the_reference_formulas():
    boxes = np.array([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 9.0, 29.0]])
    offsets = np.array([[0.1, -0.2, 0.05, 0.3], [-0.5, 0.0, 0.5, 0.1]])
    for inclusive, extra in ((True, 1.0), (False, 0.0)):
        moved = regress(boxes, offsets, inclusive)
        for out, (x1, y1, x2, y2), (dx1, dy1, dx2, dy2) in zip(moved, boxes, offsets):
            w, h = x2 - x1 + extra, y2 - y1 + extra
            np.testing.assert_allclose(out, [x1 + dx1 * w, y1 + dy1 * h, x2 + dx2 * w, y2 + dy2 * h])
    for out, (x1, y1, x2, y2) in zip(square(boxes), boxes):  # rerec
        w, h = x2 - x1, y2 - y1
        side = max(w, h)
        np.testing.assert_allclose(out, [x1 + w / 2 - side / 2, y1 + h / 2 - side / 2,
                                         x1 + w / 2 + side / 2, y1 + h / 2 + side / 2])


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_matches_the_greedy_rule_written_out(mode):
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (60, 2))], axis=1)
    scores = rng.random(60)
    kept = []
    for i in sorted(range(60), key=lambda i: -scores[i]):
        def overlap(j):
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1)
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1)
            area = [(b[2] - b[0] + 1) * (b[3] - b[1] + 1) for b in (boxes[i], boxes[j])]
            return w * h / (min(area) if mode == "min" else sum(area) - w * h)
        if all(overlap(j) <= 0.5 for j in kept):
            kept.append(i)
    assert nms(boxes, scores, 0.5, mode).tolist() == kept
    with pytest.raises(ValueError, match="union, min"):
        nms(boxes, scores, 0.5, "max")
