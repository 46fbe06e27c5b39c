"""dataset.align_face against a re-statement of the reference: insightface's norm_crop estimates the
transform with scikit-image's SimilarityTransform (Umeyama, with scale) and warps with cv2.warpAffine."""

import cv2
import numpy as np
import pytest

from dataset import ARCFACE_TEMPLATE, align_face, five_points, similarity_transform
from dataset.align import template_for


def skimage_umeyama(src, dst):
    """skimage.transform._geometric._umeyama(src, dst, estimate_scale=True), re-stated: the 3x3 matrix."""
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    A = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(A) < 0:
        d[dim - 1] = -1
    T = np.eye(dim + 1, dtype=np.float64)
    U, S, V = np.linalg.svd(A)
    rank = np.linalg.matrix_rank(A)
    if rank == 0:
        return np.nan * T
    elif rank == dim - 1:
        if np.linalg.det(U) * np.linalg.det(V) > 0:
            T[:dim, :dim] = U @ V
        else:
            s = d[dim - 1]
            d[dim - 1] = -1
            T[:dim, :dim] = U @ np.diag(d) @ V
            d[dim - 1] = s
    else:
        T[:dim, :dim] = U @ np.diag(d) @ V
    scale = 1.0 / src_demean.var(axis=0).sum() * (S @ d)
    T[:dim, dim] = dst_mean - scale * (T[:dim, :dim] @ src_mean.T)
    T[:dim, :dim] *= scale
    return T


def similar_points(rng, angle_degrees, scale, shift):
    angle = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return ARCFACE_TEMPLATE @ rotation.T * scale + shift


def test_transform_equals_the_reference_estimate_on_random_and_degenerate_points():
    rng = np.random.default_rng(0)
    cases = [rng.uniform(0, 500, (5, 2)) for _ in range(200)]
    cases += [similar_points(rng, a, s, rng.uniform(-50, 400, 2)) for a, s in ((0, 1), (35, 2.5), (-170, 0.3))]
    cases.append(ARCFACE_TEMPLATE[:, ::-1].copy())  # mirrored: the best orthogonal map is a reflection
    cases.append(np.stack([np.arange(5.0), 2 * np.arange(5.0) + 1], 1))  # collinear
    for points in cases:
        reference = skimage_umeyama(points, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(similarity_transform(points, ARCFACE_TEMPLATE), reference[:2], rtol=1e-10,
                                   atol=1e-10)


def test_landmarks_on_a_similar_copy_of_the_template_map_onto_it_exactly():
    rng = np.random.default_rng(1)
    points = similar_points(rng, 17.0, 3.2, np.array([140.0, 90.0]))
    matrix = similarity_transform(points, template_for(112))
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-9)


def test_aligned_crop_puts_marked_landmarks_on_the_template_and_the_border_is_black():
    rng = np.random.default_rng(2)
    image = np.full((400, 500, 3), 128, np.uint8)
    points = similar_points(rng, -12.0, 2.0, np.array([190.0, 120.0]))
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), 4, (255, 0, 0), -1)
    crop = align_face(image, points)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x)), 0] > 200 and crop[int(round(y)), int(round(x)), 1] < 60
    # the same face near the image's corner: what lies outside the image comes out black
    corner = align_face(image[100:, 150:].copy(), points - [150.0, 100.0])
    np.testing.assert_array_equal(corner[40:70, 40:70], crop[40:70, 40:70])
    assert (align_face(image, points + [-700.0, 0.0]) == 0).all()  # a face wholly left of the image
    cut = align_face(image, points - [points[:, 0].mean(), 0.0])  # the face's left half outside the image
    assert (cut[:, :40] == 0).all() and (cut[:, -40:] > 0).all()


def test_the_warp_is_opencv_bilinear_with_a_black_border():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (150, 160, 3), dtype=np.uint8)
    points = rng.uniform(20, 130, (5, 2))
    matrix = skimage_umeyama(points, ARCFACE_TEMPLATE)[:2]
    np.testing.assert_array_equal(align_face(image, points), cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0))


def test_other_sizes_scale_the_template_as_insightface_does():
    np.testing.assert_allclose(template_for(224), ARCFACE_TEMPLATE * 2)
    expected = ARCFACE_TEMPLATE * 1.0
    expected[:, 0] += 8.0
    np.testing.assert_allclose(template_for(128), expected)
    rng = np.random.default_rng(4)
    assert align_face(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), ARCFACE_TEMPLATE * 2, 224).shape == \
        (224, 224, 3)


def test_68_landmarks_reduce_to_eye_centres_nose_and_mouth_corners():
    rng = np.random.default_rng(5)
    points68 = rng.uniform(0, 200, (68, 2))
    five = five_points(points68)
    np.testing.assert_allclose(five[0], (points68[36] + points68[39]) / 2)
    np.testing.assert_allclose(five[1], (points68[42] + points68[45]) / 2)
    np.testing.assert_array_equal(five[2:], points68[[30, 48, 54]])
    image = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(image, points68), align_face(image, five))


@pytest.mark.parametrize("landmarks, message", [
    (np.zeros((4, 2)), r"\[5, 2\] or \[68, 2\]"),
    (np.zeros(10), r"\[5, 2\] or \[68, 2\]"),
    (np.array([[1, 2], [3, np.nan], [4, 5], [6, 7], [8, 9]]), "NaN"),
    (np.full((5, 2), 7.0), "same point"),
])
def test_bad_landmarks_are_clear_errors(landmarks, message):
    with pytest.raises(ValueError, match=message):
        align_face(np.zeros((112, 112, 3), np.uint8), landmarks)
