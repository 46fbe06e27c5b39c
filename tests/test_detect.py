"""MTCNN (dataset.detect, dataset.mtcnn) on a real photo, matplotlib's grace_hopper.jpg, and on
composites made from it with known transforms: scaled, rotated, mirrored, several faces on one
canvas, faces cut by the border. Landmarks are mapped through each transform and compared with what
the detector finds there. facenet-pytorch's detect_face is re-stated below as plain code and the
detector is held to it on multi-face composites, and each building block to the matching step."""

import json
import math
import os
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

from dataset import align_face
from dataset.detect import (Detector, area_resample, crop_bins, crop_regions, cumulative_sums, detect_faces, detector,
                            face_sizes, largest_face, level_cells, level_size, nms, nms_min, pack_levels,
                            past_odd_sides, pyramid_scales, regress, square, summed_area_table, window_boxes)
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
    np.testing.assert_allclose(boxes[0], REFERENCE_BOX, atol=1e-3)
    np.testing.assert_allclose(scores[0], REFERENCE_SCORE, atol=1e-6)
    np.testing.assert_allclose(landmarks[0], REFERENCE_LANDMARKS, atol=1e-3)


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
def test_face_cut_by_the_border_is_found_as_facenet_pytorch_finds_it(original, photo, nets, shift):
    matrix = np.float64([[1, 0, shift], [0, 1, 0]])
    image = warp(photo, matrix, (512, 600))
    boxes, _, landmarks = detect(image)
    with torch.inference_mode():
        expected_boxes, _, expected_landmarks = reference_detect_face(image, nets)
    assert len(boxes) == len(expected_boxes) == 1
    np.testing.assert_allclose(boxes, expected_boxes, atol=0.01)
    np.testing.assert_allclose(landmarks, expected_landmarks, atol=0.01)
    # facenet-pytorch crops a box that reaches past the border clipped to the image (the original
    # MTCNN pads it with zeros), so O-Net sees the face squeezed sideways: with the box 17 px inside
    # the border its points move by a tenth of the eye distance, with it 75 px past, by half.
    error = landmark_error(landmarks[0], mapped(matrix, original[1]))
    if shift == -150:
        assert boxes[0][0] > 0 and error < 0.15
    else:
        assert boxes[0][0] < 0 and 0.3 < error < 0.7


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


# ============ facenet-pytorch's detect_face, re-stated ============
# facenet-pytorch 2.6.0's models/utils/detect_face.py for one image on the CPU, written out here
# step by step from its code (the torch operations it runs, in its order; NMS as torchvision's CPU
# kernel and batched_nms do it). Our networks, loaded strictly with the same shipped weights, stand
# in for its PNet, RNet and ONet, whose layers they repeat. The restatement reproduces facenet-pytorch's
# own numbers on the photo and on a composite (measured with facenet-pytorch 2.6.0, torchvision 0.29.1).

def reference_nms(boxes, scores, threshold):
    """torchvision.ops.batched_nms for one image: its CPU kernel orders by scores.sort(0,
    descending=True), takes areas (x2 - x1) * (y2 - y1) in the boxes' dtype, and suppresses j when
    inter / (area_i + area_j - inter) > threshold (the double threshold); above 4000 coordinates
    batched_nms takes its 'vanilla' path, which re-sorts the kept indices (in index order) by score."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(0, descending=True)[1]
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for position, i in enumerate(order.tolist()):
        if suppressed[i]:
            continue
        keep.append(i)
        later = order[position + 1:]
        w = (torch.minimum(x2[i], x2[later]) - torch.maximum(x1[i], x1[later])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[later]) - torch.maximum(y1[i], y1[later])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[later] - inter)
        suppressed[later[iou.double() > threshold].numpy()] = True
    keep = torch.tensor(keep, dtype=torch.long)
    if boxes.numel() > 4000:
        keep = keep.sort()[0]
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


def reference_nms_min(boxes, scores, threshold):
    """nms_numpy(boxes, scores, threshold, 'Min'), which detect_face reaches through batched_nms_numpy
    (one image: the per-image offset is 0): numpy float32, areas (x2 - x1 + 1) * (y2 - y1 + 1),
    I = np.argsort(scores), the best is I[-1], o = inter / min(area_i, area_rest), I = I[o <= threshold]."""
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = []
    while order.size > 0:
        i, rest = order[-1], order[:-1]
        pick.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        o = w * h / np.minimum(area[i], area[rest])
        order = rest[np.where(o <= threshold)]
    return np.asarray(pick, dtype=np.int64)


def reference_rerec(boxes):
    """rerec: w, h = x2 - x1, y2 - y1; l = max(w, h); x1 += w * 0.5 - l * 0.5 (left to right), y1
    alike; then x2, y2 = the new x1, y1 + l."""
    boxes = boxes.clone()
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side.repeat(2, 1).permute(1, 0)
    return boxes


def reference_bbreg(boxes, reg):
    """bbreg: w = x2 - x1 + 1, h = y2 - y1 + 1; each corner plus its offset times w or h."""
    boxes = boxes.clone()
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                                boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], dim=1)
    return boxes


def reference_pad(boxes, w, h):
    """pad: corners truncated to int; x, y raised to 1, ex, ey lowered to w, h (the crop is clipped)."""
    corners = boxes.trunc().int().numpy()
    x, y, ex, ey = (corners[:, k].copy() for k in range(4))
    x[x < 1], y[y < 1], ex[ex > w], ey[ey > h] = 1, 1, w, h
    return y, ey, x, ex


def reference_net_outputs(net, imgs, boxes, size):
    """The second and third stage's crops: imgs[image_inds[k], :, y-1:ey, x-1:ex] (a tensor index: a
    contiguous copy), area-resampled to size x size one at a time, then normalised; the net runs on
    batches of 512 (fixed_batch_process)."""
    y, ey, x, ex = reference_pad(boxes, imgs.shape[3], imgs.shape[2])
    image = torch.tensor(0)
    crops = torch.cat([interpolate(imgs[image, :, y[k] - 1:ey[k], x[k] - 1:ex[k]].unsqueeze(0), size=(size, size),
                                   mode="area")
                       for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1])
    crops = (crops - 127.5) * 0.0078125
    outputs = [net(crops[first:first + 512]) for first in range(0, len(crops), 512)]
    return [torch.cat(column) for column in zip(*outputs)]


def reference_detect_face(image, nets, minsize=20, threshold=(0.6, 0.7, 0.7), factor=0.709):
    """(boxes [K, 4], scores [K], landmarks [K, 5, 2]) as detect_face returns them for one RGB uint8 image."""
    pnet, rnet, onet = nets
    imgs = torch.as_tensor(image.copy())[None].permute(0, 3, 1, 2).float()  # NHWC seen as NCHW, as there
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl = min(h, w) * m
    scale_i, scales = m, []
    while minl >= 12:
        scales.append(scale_i)
        scale_i, minl = scale_i * factor, minl * factor
    # First stage: P-Net on each level alone; generateBoundingBox; NMS 0.5 per level, 0.7 over all.
    level_boxes, scale_picks, offset = [], [], 0
    for scale in scales:
        im_data = interpolate(imgs, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        reg, probs = pnet((im_data - 127.5) * 0.0078125)  # probs: the face column of P-Net's softmax
        mask = probs >= threshold[0]
        mask_inds = mask.nonzero()
        score = probs[mask]
        reg = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0)
        bb = mask_inds[:, 1:].type(reg.dtype).flip(1)
        q1 = ((2 * bb + 1) / scale).floor()
        q2 = ((2 * bb + 12 - 1 + 1) / scale).floor()
        boxes = torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1)
        scale_picks.append(reference_nms(boxes[:, :4], boxes[:, 4], 0.5) + offset)
        offset += boxes.shape[0]
        level_boxes.append(boxes)
    boxes = torch.cat(level_boxes)[torch.cat(scale_picks)]
    boxes = boxes[reference_nms(boxes[:, :4], boxes[:, 4], 0.7)]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], dim=1)
    boxes = reference_rerec(boxes)
    # Second stage: R-Net on 24x24 crops; score > threshold; NMS 0.7; bbreg; rerec.
    if len(boxes) > 0:
        reg, score = reference_net_outputs(rnet, imgs, boxes, 24)
        ipass = score > threshold[1]
        boxes, mv = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1), reg[ipass]
        pick = reference_nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = reference_rerec(reference_bbreg(boxes[pick], mv[pick]))
    # Third stage: O-Net on 48x48 crops; landmarks from the boxes before bbreg; bbreg; NMS 'Min' 0.7.
    points = torch.zeros(0, 5, 2)
    if len(boxes) > 0:
        reg, marks, score = reference_net_outputs(onet, imgs, boxes, 48)
        ipass = score > threshold[2]
        marks, boxes, mv = marks[ipass], torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1), reg[ipass]
        w_i, h_i = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        points_x = w_i.repeat(5, 1) * marks[:, :5].T + boxes[:, 0].repeat(5, 1) - 1
        points_y = h_i.repeat(5, 1) * marks[:, 5:].T + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((points_x, points_y)).permute(2, 1, 0)
        boxes = reference_bbreg(boxes, mv)
        pick = reference_nms_min(boxes[:, :4].numpy(), boxes[:, 4].numpy(), 0.7)
        boxes, points = boxes[pick], points[pick]
    return boxes[:, :4].numpy(), boxes[:, 4].numpy(), points.numpy()


@pytest.fixture(scope="module")
def nets():
    return load_nets()


def background(kind, height, width):
    rng = np.random.default_rng(7)
    if kind == "grey":
        return np.full((height, width, 3), 60, np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "blurred noise":
        return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 4)
    ramp = np.linspace(20, 235, width)  # "ramp": dark to light, left to right
    return np.repeat(np.repeat(ramp[None, :, None], height, 0), 3, 2).astype(np.uint8)


# name: (background, height, width, [(angle in degrees, scale, x, y, mirrored) of each copy of the photo])
COMPOSITES = {
    "three faces on grey": ("grey", 500, 900, [(0, 0.5, 0, 0, False), (15, 0.35, 350, 150, False),
                                               (-10, 0.7, 520, 40, False)]),
    "mirrored and tilted on noise": ("noise", 640, 960, [(-25, 0.3, 40, 330, True), (20, 0.55, 330, 0, False),
                                                         (8, 0.15, 740, 450, True), (-12, 0.22, 790, 60, False)]),
    "cut by the borders": ("blurred noise", 600, 800, [(0, 0.8, -140, 90, False), (10, 0.6, 560, -80, True),
                                                       (-5, 0.25, 330, 420, False)]),
    "small to large": ("ramp", 720, 1100, [(0, 0.09, 20, 20, False), (5, 0.16, 120, 40, True),
                                           (-8, 0.3, 260, 30, False), (12, 1.0, 560, 60, True),
                                           (-20, 0.45, 60, 330, True)]),
}
COMPOSITE_FACES = {"three faces on grey": 3, "mirrored and tilted on noise": 4, "cut by the borders": 3,
                   "small to large": 5}
# What facenet-pytorch 2.6.0 (detect_face with MTCNN()'s nets and defaults) returns for "three faces on grey".
THREE_FACES_BOXES = [[612.0052, 143.7208, 737.0572, 302.7364], [88.8911, 55.1115, 180.3882, 173.5037],
                     [423.9084, 162.1827, 491.5583, 244.3289]]
THREE_FACES_SCORES = [0.99999988, 0.99996471, 0.99948347]
THREE_FACES_LANDMARKS = [
    [[650.9177, 198.0409], [710.6215, 206.6938], [678.9388, 234.4144], [645.1564, 258.1921], [698.3787, 266.8754]],
    [[110.9615, 95.9771], [154.2785, 93.7049], [134.8419, 119.157], [118.3216, 140.5947], [154.4493, 138.2888]],
    [[441.3297, 196.9523], [471.2225, 185.3975], [462.8804, 205.9713], [454.8538, 226.6523], [480.2208, 215.9562]]]


def composite(photo, name):
    kind, height, width, placements = COMPOSITES[name]
    canvas = background(kind, height, width)
    for angle, scale, x, y, mirrored in placements:
        matrix = cv2.getRotationMatrix2D((0, 0), angle, scale)
        matrix[:, 2] += (x, y)
        warp(np.ascontiguousarray(photo[:, ::-1]) if mirrored else photo, matrix, (width, height), canvas)
    return canvas


def box_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_the_restatement_gives_facenet_pytorchs_numbers(photo, nets):
    with torch.inference_mode():
        boxes, scores, landmarks = reference_detect_face(photo, nets)
        np.testing.assert_allclose(boxes, [REFERENCE_BOX], atol=1e-3)
        np.testing.assert_allclose(scores, [REFERENCE_SCORE], atol=1e-6)
        np.testing.assert_allclose(landmarks, [REFERENCE_LANDMARKS], atol=1e-3)
        boxes, scores, landmarks = reference_detect_face(composite(photo, "three faces on grey"), nets)
    np.testing.assert_allclose(boxes, THREE_FACES_BOXES, atol=1e-3)
    np.testing.assert_allclose(scores, THREE_FACES_SCORES, atol=1e-6)
    np.testing.assert_allclose(landmarks, THREE_FACES_LANDMARKS, atol=1e-3)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_detect_faces_equals_facenet_pytorch_on_multi_face_composites(photo, nets, name):
    image = composite(photo, name)
    with torch.inference_mode():
        expected = reference_detect_face(image, nets)
    boxes, scores, landmarks = detect(image)
    assert len(expected[0]) == len(boxes) == COMPOSITE_FACES[name]
    # The bar: IoU >= 0.99 and landmarks within 1 px, face by face in the same (score) order.
    assert min(box_iou(a, b) for a, b in zip(boxes, expected[0])) >= 0.99
    assert np.abs(landmarks - expected[2]).max() <= 1.0
    # What is reached: the same windows, crops and NMS decisions, so only the networks' float rounding
    # (one canvas against a call per level, channels_last) is left.
    np.testing.assert_allclose(boxes, expected[0], atol=0.01)
    np.testing.assert_allclose(landmarks, expected[2], atol=0.01)
    np.testing.assert_allclose(scores, expected[1], atol=1e-5)


# ============ the building blocks against the reference ============

def test_pyramid_scales_match_the_closed_form():
    for height, width, min_face in [(600, 512, 20), (480, 640, 40), (1080, 1920, 20), (13, 500, 12), (11, 11, 20)]:
        first = 12 / min_face
        # Levels k = 0, 1, ... while min(h, w) * first * 0.709^k >= 12.
        count = math.floor(math.log(12 / (min(height, width) * first)) / math.log(0.709)) + 1 \
            if min(height, width) * first >= 12 else 0
        np.testing.assert_allclose(pyramid_scales(height, width, min_face, 0.709),
                                   [first * 0.709 ** k for k in range(count)], rtol=1e-12)
    assert level_size(600, 512, 0.6) == (361, 308)  # int(h * scale + 1), as the reference sizes them


def test_level_cells_are_pnets_output_size_on_odd_and_even_sides(nets):
    with torch.inference_mode():
        for height, width in [(12, 12), (13, 14), (25, 18), (31, 40)]:
            _, probability = nets[0](torch.zeros(1, 3, height, width))
            assert tuple(probability.shape[1:]) == level_cells(height, width)


def test_pack_levels_places_every_level_apart_at_even_offsets():
    sizes = [level_size(600, 512, s) for s in pyramid_scales(600, 512)]
    offsets, (height, width) = pack_levels(sizes)
    taken = np.zeros((height, width), dtype=int)
    for (top, left), (level_h, level_w) in zip(offsets, sizes):
        assert top % 2 == 0 and left % 2 == 0
        taken[top:top + level_h + level_h % 2, left:left + level_w + level_w % 2] += 1  # with the odd side's extra row
    assert taken.max() == 1 and height % 2 == 0 and width % 2 == 0
    assert height * width < 1.5 * sum(h * w for h, w in sizes)  # the packing wastes little


@pytest.mark.parametrize("masked", [True, False])
def test_packed_pyramid_scores_equal_pnet_on_each_level_alone(photo, nets, masked):
    """P-Net once over the packed canvas gives, at every cell of a level, what P-Net gives on that level
    by itself (the reference runs one call per level), also the last row and column of cells on an odd
    side, whose window reaches past the level: there the first max-pool must not see the neighbour."""
    pnet = nets[0]
    table = summed_area_table(photo, "cpu")
    scales = pyramid_scales(*photo.shape[:2])[:5]
    sizes = [level_size(*photo.shape[:2], s) for s in scales]
    assert {h % 2 for h, _ in sizes} == {w % 2 for _, w in sizes} == {0, 1}  # odd and even sides both
    offsets, canvas_size = pack_levels(sizes)
    canvas = torch.full((*canvas_size, 3), 0.9)  # a bright neighbour: what leaks into a max-pool shows
    levels = []
    for (top, left), size in zip(offsets, sizes):
        level = (area_resample(table, np.array([[0, 0]]), np.array([[photo.shape[1], photo.shape[0]]]), size)[0]
                 - 127.5) * 0.0078125
        canvas[top:top + size[0], left:left + size[1]] = level
        levels.append(level)
    with torch.inference_mode():
        packed_offsets, packed = pnet(canvas.permute(2, 0, 1)[None], past_odd_sides(offsets, sizes) if masked else ())
        differences = []
        for (top, left), level in zip(offsets, levels):
            alone_offsets, alone = pnet(level.permute(2, 0, 1)[None])
            cells = slice(top // 2, top // 2 + alone.shape[1]), slice(left // 2, left // 2 + alone.shape[2])
            differences.append(max((packed[0][cells] - alone[0]).abs().max(),
                                   (packed_offsets[0][:, cells[0], cells[1]] - alone_offsets[0]).abs().max()))
    if masked:
        assert max(differences) < 1e-5
    else:
        assert max(differences) > 1e-3  # without it the odd sides' last cells see the neighbour


def test_area_crops_are_torch_area_interpolation_bit_for_bit(photo):
    image = torch.as_tensor(photo)[None].permute(0, 3, 1, 2).float()  # as the reference holds the image
    table = summed_area_table(photo, "cpu")
    starts = np.array([[150, 100], [0, 0], [400, 500], [10, 20], [3, 7]])
    lengths = np.array([[181, 181], [150, 150], [112, 100], [7, 7], [509, 593]])  # ..., smaller than the output, whole
    for size in [(24, 24), (48, 48), (13, 11), (426, 364)]:
        crops = area_resample(table, starts, lengths, size)
        for crop, (x, y), (w, h) in zip(crops, starts, lengths):
            expected = interpolate(image[:, :, y:y + h, x:x + w], size=size, mode="area")[0].permute(1, 2, 0)
            assert torch.equal(crop, expected)
    # Outside the image counts as zero.
    padded = np.zeros((photo.shape[0] + 200, photo.shape[1] + 200, 3), dtype=np.uint8)
    padded[100:-100, 100:-100] = photo
    crop = area_resample(table, np.array([[-60, -30]]), np.array([[150, 150]]), (24, 24))[0]
    region = torch.from_numpy(padded[70:220, 40:190]).permute(2, 0, 1)[None].float()
    assert torch.equal(crop, interpolate(region, size=(24, 24), mode="area")[0].permute(1, 2, 0))
    big = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(cumulative_sums(torch.from_numpy(big), torch.int32), summed_area_table(big, "cpu"))


def test_crop_bins_are_adaptive_pooling_bins():
    starts, lengths = np.array([5, -3]), np.array([50, 7])
    first, end = crop_bins(starts, lengths, 24)
    for row, (start, n) in enumerate(zip(starts, lengths)):
        assert first[row].tolist() == [start + math.floor(k * n / 24) for k in range(24)]
        assert end[row].tolist() == [start + math.ceil((k + 1) * n / 24) for k in range(24)]


def test_crop_regions_are_the_references_clipped_crops():
    boxes = np.array([[10.7, 20.2, 50.9, 61.5], [-30.5, -0.4, 40.0, 39.9], [590.0, 500.2, 700.3, 650.8],
                      [-5.0, 10.0, 0.5, 20.0], [650.0, 10.0, 700.0, 30.0]], dtype=np.float32)
    starts, lengths = crop_regions(boxes, 600, 640)
    y, ey, x, ex = reference_pad(torch.from_numpy(boxes), 640, 600)
    np.testing.assert_array_equal(starts, np.stack([x - 1, y - 1], axis=1))
    np.testing.assert_array_equal(lengths, np.stack([ex - x + 1, ey - y + 1], axis=1))
    assert (lengths[:3] > 0).all() and (lengths[3:, 0] <= 0).all()  # the last two hold no pixel


def test_window_boxes_are_generate_bounding_boxs_float32_floors():
    rows, cols = np.meshgrid(np.arange(200), np.arange(150), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    for scale in [0.6, 0.6 * 0.709, 0.6 * 0.709 ** 5, 0.0713]:
        bb = torch.from_numpy(np.stack([rows, cols], axis=1)).float().flip(1)
        expected = torch.cat([((2 * bb + 1) / scale).floor(), ((2 * bb + 12) / scale).floor()], dim=1)
        np.testing.assert_array_equal(window_boxes(rows, cols, scale), expected.numpy())
    # In float64 some corners differ by a pixel: what the float32 pins.
    double = np.floor((2 * cols.astype(np.float64) + 1) / 0.6)
    assert (double != window_boxes(rows, cols, 0.6)[:, 0]).any()


def test_regress_and_square_are_bbreg_and_rerec_bit_for_bit():
    rng = np.random.default_rng(5)
    corners = rng.uniform(-50, 600, (500, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(1, 300, (500, 2)).astype(np.float32)], axis=1)
    offsets = rng.uniform(-0.3, 0.3, (500, 4)).astype(np.float32)
    expected = reference_bbreg(torch.from_numpy(boxes), torch.from_numpy(offsets))
    np.testing.assert_array_equal(regress(boxes, offsets), expected.numpy())
    # P-Net's offsets count the size as a plain difference (detect_face's regw = x2 - x1).
    w, h = torch.from_numpy(boxes[:, 2] - boxes[:, 0]), torch.from_numpy(boxes[:, 3] - boxes[:, 1])
    t, o = torch.from_numpy(boxes), torch.from_numpy(offsets)
    expected = torch.stack([t[:, 0] + o[:, 0] * w, t[:, 1] + o[:, 1] * h,
                            t[:, 2] + o[:, 2] * w, t[:, 3] + o[:, 3] * h], dim=1)
    np.testing.assert_array_equal(regress(boxes, offsets, inclusive=False), expected.numpy())
    np.testing.assert_array_equal(square(boxes), reference_rerec(torch.from_numpy(boxes)).numpy())


def random_boxes(count, seed, levels=3):
    """Boxes on a grid, many overlapping, with scores from few values so that ties are common."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 60, (count, 2)).astype(np.float32) * 3
    boxes = np.concatenate([corners, corners + rng.integers(4, 40, (count, 2)).astype(np.float32)], axis=1)
    return boxes, (rng.integers(0, levels, count) / levels + 0.1).astype(np.float32)


@pytest.mark.parametrize("count", [60, 1200])  # 1200: past the 4000 coordinates where batched_nms changes path
def test_nms_is_torchvisions_including_its_order_of_ties(count):
    boxes, scores = random_boxes(count, count)
    for threshold in (0.5, 0.7):
        expected = reference_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
        assert nms(boxes, scores, threshold).tolist() == expected.tolist()


def test_nms_min_is_the_original_min_rule():
    boxes, scores = random_boxes(300, 4)
    assert nms_min(boxes, scores, 0.7).tolist() == reference_nms_min(boxes, scores, 0.7).tolist()
    # A box inside a bigger, better one goes even though their union overlap is small.
    inside = np.array([[0, 0, 99, 99], [10, 10, 29, 29]], dtype=np.float32)
    assert nms_min(inside, np.array([0.9, 0.8], dtype=np.float32), 0.7).tolist() == [0]
    assert nms(inside, np.array([0.9, 0.8], dtype=np.float32), 0.7).tolist() == [0, 1]


@pytest.mark.slow  # importing torchvision and facenet-pytorch in the tool's process takes most of it
def test_benchmark_runs_facenet_pytorch_beside_the_detector_and_finds_them_equal(photo, tmp_path):
    """tools/bench/benchmark_detect.py --facenet-pytorch: the one place where facenet-pytorch itself runs (in
    the tool's own process), on two composites written as PNG files."""
    for name in ("three faces on grey", "cut by the borders"):
        image = cv2.cvtColor(composite(photo, name), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(tmp_path / f"{name.replace(' ', '_')}.png"), image)
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench", "benchmark_detect.py")
    result = subprocess.run([sys.executable, tool, "--images", str(tmp_path), "--runs", "2", "--threads", "1",
                             "--facenet-pytorch", "--json"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["faces_per_image"] == 3 and report["photos_with_other_faces"] == 0
    assert report["largest_difference_px"] < 0.01
    assert report["images_per_s"] > 0 and report["facenet_pytorch_images_per_s"] > 0
