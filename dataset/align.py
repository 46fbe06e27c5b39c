"""Face alignment from five landmarks onto the ArcFace template, as insightface's `norm_crop` does it.

The similarity transform (rotation, uniform scale, translation) that maps the landmarks onto the
template in the least-squares sense is Umeyama's estimate ("Least-squares estimation of
transformation parameters between two point patterns", TPAMI 1991), the one scikit-image's
`SimilarityTransform.estimate` computes; the crop is then a bilinear warp with a black border.
"""

import cv2
import numpy as np

# Left eye, right eye, nose tip, left and right mouth corner (x, y) of a 112x112 ArcFace crop.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def template_for(size: int) -> np.ndarray:
    """The template for a `size`-pixel crop, scaled as insightface scales it: multiples of 112 are
    the 112 template enlarged; other sizes are the 128-pixel variant (the 112 one shifted 8 pixels
    right, then scaled by size/128)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    ratio = size / 128.0
    template = ARCFACE_TEMPLATE * ratio
    template[:, 0] += 8.0 * ratio
    return template


def five_points(landmarks) -> np.ndarray:
    """float64 [5, 2] from 5 or 68 landmarks; 68 (the iBUG layout) become the eye centres (means of
    points 36 and 39, 42 and 45), the nose tip (30) and the mouth corners (48, 54)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape == (68, 2):
        points = np.stack([(points[36] + points[39]) / 2, (points[42] + points[45]) / 2,
                           points[30], points[48], points[54]])
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be [5, 2] or [68, 2] (x, y in pixels), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"landmarks hold a NaN or infinite value: {points.tolist()}")
    if np.ptp(points, axis=0).max() == 0:
        raise ValueError(f"all landmarks are the same point {points[0].tolist()}: no face geometry to align")
    return points


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the least-squares similarity transform taking `source` points onto `target`."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:  # the best orthogonal map would be a reflection: flip one axis
        signs[1] = -1
    rotation_signs = signs
    if np.linalg.matrix_rank(covariance) == 1:  # collinear points: the sign follows U and V instead
        rotation_signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rotation = u @ np.diag(rotation_signs) @ vt
    scale = (singular @ signs) / source_centred.var(axis=0).sum()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - scale * rotation @ source_mean
    return matrix


def align_face(image: np.ndarray, landmarks, size: int = 112) -> np.ndarray:
    """uint8 [size, size, 3]: `image` (uint8 HxWx3) warped so that its 5 (or 68) landmarks land on
    the ArcFace template; pixels from outside the image are black."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} of shape {image.shape}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    matrix = similarity_transform(five_points(landmarks), template_for(size))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0.0)
