"""Procedurally rendered face-like identities: the project's demo data and test bed.

Each identity is a set of traits drawn from ``(seed, identity)``: head shape and jaw, skin, hair
colour and hairline, brows, eye/nose/mouth geometry and colours, a low-frequency skin pattern and
discrete traits (glasses, beard, mole). Each image of it adds nuisance drawn from
``(seed, identity, index, variant)``: background and clothes, expression, yaw, in-plane rotation,
scale and shift, a lighting gradient and colour cast, occlusion, blur, noise and JPEG loss.

``difficulty`` (0 = every image of an identity identical, 1 = hardest) scales all of it smoothly:
each nuisance amplitude is ``difficulty`` times its maximum in ``_NUISANCE`` (yaw and age: times
the variant's range), except background and clothes, which are fully random from difficulty 0.5
up. At the default, 0.5, raw-pixel cosine similarity scores about 0.58 on LFW-like pairs, while a
six-layer CNN with an ArcFace head (s=16, m=0.1, AdamW), trained on one CPU thread for 2.5 minutes
(9-16k images seen), scores 0.90-0.95.

The verification pairs copy the layout of insightface's ``lfw.bin`` / ``agedb_30.bin`` /
``cfp_fp.bin`` (Deng et al., "ArcFace", CVPR 2019, and the insightface repository): ten folds of
``N/10`` pairs, each fold its matched pairs first and then its unmatched ones, as LFW's
``pairs.txt`` orders them (Huang et al., 2007). The ``cfp`` kind pairs a near-frontal image with
one turned by 0.6-1.0 times ``difficulty`` of a ~75 degree yaw (CFP-FP, Sengupta et al., WACV 2016); the ``agedb`` kind pairs a young
image with an aged one (AgeDB-30, Moschoglou et al., CVPRW 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from runtime.errors import UnknownName

from .synthetic_face import IMAGE_SIZE, draw_face, ellipse, face_landmarks, identity_traits

DEFAULT_DIFFICULTY = 0.5
VERIFICATION_FOLDS = 10
_IMAGE_STREAM, _PAIR_STREAM = 2, 3  # RNG streams apart from each other and from TRAIT_STREAM (1)

# Maximum nuisance at difficulty 1; each image draws a fraction of these (times the difficulty).
_NUISANCE = dict(
    rotation_deg=15.0, log_scale=0.14, shift_px=7.0, light_gradient=0.45, light_gain=0.25,
    colour_cast=0.12, blur_sigma=1.2, noise_sigma=12.0, occlusion_prob=0.35, jpeg_prob=0.5,
    blink=0.8, mouth_open=1.0, smile=1.0,
)
# Background and clothes are fully random from this difficulty up: they defeat raw pixels yet
# cost a network little to ignore, so they saturate early while the harder nuisance keeps growing.
_SCENE_SATURATION = 0.5


@dataclass(frozen=True)
class Variant:
    """Pose and age distribution of one kind of image; both ranges are multiplied by difficulty."""

    code: int
    yaw: tuple[float, float]  # range of |yaw|, 1.0 = synthetic_face.MAX_YAW_RAD
    age: tuple[float, float]  # 0 = the identity as drawn, 1 = fully aged


VARIANTS = {
    "lfw": Variant(0, yaw=(0.0, 0.3), age=(0.0, 0.0)),
    "cfp": Variant(1, yaw=(0.6, 1.0), age=(0.0, 0.0)),
    "agedb": Variant(2, yaw=(0.0, 0.3), age=(0.5, 1.0)),
    # Training images span every pose and age the test sets use, as a real training set would.
    "train": Variant(3, yaw=(0.0, 1.0), age=(0.0, 1.0)),
}
# Which two variants each verification kind pairs.
PAIR_KINDS = {"lfw": ("lfw", "lfw"), "cfp": ("lfw", "cfp"), "agedb": ("lfw", "agedb")}


_GRID = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE / 2) - 1.0


class SyntheticFaces:
    """Renders images of synthetic identities; see the module docstring for what varies.

    ``render(identity, index, variant)`` is a pure function of ``(seed, difficulty, identity,
    index, variant)``, so images can be made in any order, in any process, and still match.
    """

    def __init__(self, seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY):
        if not 0.0 <= difficulty <= 1.0:
            raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.seed, self.difficulty = int(seed), float(difficulty)

    def render(self, identity: int, index: int, variant: str = "lfw") -> np.ndarray:
        """Image ``index`` of ``identity`` as uint8 [112, 112, 3] RGB."""
        return self.render_with_landmarks(identity, index, variant)[0]

    def render_with_landmarks(self, identity: int, index: int, variant: str = "lfw") -> tuple[np.ndarray, np.ndarray]:
        """(the image ``render`` gives, float64 [5, 2] where its left eye, right eye, nose tip and
        left and right mouth corner are, x then y in pixels, after the pose and scale nuisance)."""
        if variant not in VARIANTS:
            raise UnknownName("variant", variant, sorted(VARIANTS))
        if identity < 0 or index < 0:
            raise ValueError(f"identity and index must be non-negative, got {identity}, {index}")
        spec, d, n = VARIANTS[variant], self.difficulty, _NUISANCE
        rng = np.random.default_rng([self.seed, _IMAGE_STREAM, identity, index, spec.code])
        u = rng.uniform
        traits = identity_traits(self.seed, identity)
        grey = np.array([128.0, 128, 128])
        img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        # Background and clothes: large areas that change per image and say nothing of identity.
        # (A filled rectangle paints the canvas faster than numpy's 3-channel broadcast.)
        scene = min(1.0, d / _SCENE_SATURATION)
        background = grey + scene * (rng.uniform(20, 235, 3) - grey)
        cv2.rectangle(img, (0, 0), (IMAGE_SIZE, IMAGE_SIZE), tuple(map(float, background)), -1)
        clothes = grey + scene * (rng.uniform(0, 255, 3) - grey)
        ellipse(img, IMAGE_SIZE / 2 + u(-6, 6) * scene, IMAGE_SIZE + 8, 46, 26, 0, clothes)
        yaw = d * u(*spec.yaw) * (1 if u() < 0.5 else -1)
        age = d * u(*spec.age)
        eye_open = 1 - d * n["blink"] * u() ** 2
        mouth_open = d * n["mouth_open"] * max(u(-1, 1), 0)
        smile = d * n["smile"] * u(-1, 1)
        skin_field = draw_face(img, traits, yaw, age, eye_open=eye_open, mouth_open=mouth_open, smile=smile)
        lit, warp = _light_and_pose(img, skin_field, rng, d)
        points = face_landmarks(traits, yaw, age, smile) @ warp[:, :2].T + warp[:, 2]
        return _degrade(lit, rng, d), points


def _light_and_pose(img: np.ndarray, skin_field: np.ndarray, rng: np.random.Generator,
                    d: float) -> tuple[np.ndarray, np.ndarray]:
    """Lighting (a linear gradient in a random direction, a gain and a per-channel cast, times
    the identity's skin pattern), then rotation, scale and shift about the image centre; also
    returns that 2x3 warp (canvas to image pixels)."""
    u, n = rng.uniform, _NUISANCE
    direction = u(0, 2 * np.pi)
    strength = d * n["light_gradient"] * u()
    field = skin_field * (1 + strength * (math.cos(direction) * _GRID[1]
                                          + math.sin(direction) * _GRID[0]))
    gain = (1 + d * n["light_gain"] * u(-1, 1)) * (1 + d * n["colour_cast"] * u(-1, 1, 3))
    img *= cv2.merge([field * float(g) for g in gain])
    centre = (IMAGE_SIZE / 2 + d * n["shift_px"] * u(-1, 1),
              IMAGE_SIZE / 2 + d * n["shift_px"] * u(-1, 1))
    warp = cv2.getRotationMatrix2D(centre, d * n["rotation_deg"] * u(-1, 1),
                                   math.exp(d * n["log_scale"] * u(-1, 1)))
    warp[:, 2] += np.array([IMAGE_SIZE / 2, IMAGE_SIZE / 2]) - centre
    return cv2.warpAffine(img, warp, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101), warp


def _degrade(img: np.ndarray, rng: np.random.Generator, d: float) -> np.ndarray:
    """Occlusion, blur, sensor noise and JPEG loss; float32 canvas in, uint8 image out."""
    u, n = rng.uniform, _NUISANCE
    if u() < d * n["occlusion_prob"]:  # a patch over part of the face (a hand, a scarf)
        w, h = u(15, 45), u(10, 35)
        x, y = u(20, 92 - w / 2), u(25, 95 - h / 2)
        ellipse(img, x, y, w / 2, h / 2, u(0, 180), rng.uniform(0, 255, 3))
    sigma = d * n["blur_sigma"] * u()
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    # Uniform 8-bit noise (std 73.9) scaled to the drawn sigma: cheaper than normal draws.
    noise = rng.integers(0, 256, img.shape, dtype=np.uint8).astype(np.float32)
    img += (noise - np.float32(127.5)) * np.float32(d * n["noise_sigma"] * u() / 73.9)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if u() < d * n["jpeg_prob"]:
        _, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(u(20, 90))])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


@dataclass(frozen=True, eq=False)
class PairPlan:
    """Which images a verification set pairs: pair ``i`` is image ``indices[i, j]`` of identity
    ``identities[i, j]`` rendered as ``variants[j]``, for ``j`` in 0 and 1."""

    kind: str
    identities: np.ndarray  # int64 [N, 2]
    indices: np.ndarray  # int64 [N, 2]
    issame: np.ndarray  # bool [N]
    variants: tuple[str, str]


def identity_ranges(train_identities: int, held_out_identities: int) -> dict[str, range]:
    """Disjoint identity ranges: training first, then one held-out range per pair kind."""
    ranges, start = {"train": range(0, train_identities)}, train_identities
    for kind in PAIR_KINDS:
        ranges[kind] = range(start, start + held_out_identities)
        start += held_out_identities
    return ranges


def plan_pairs(kind: str, num_pairs: int, first_identity: int, num_identities: int,
               seed: int = 0) -> PairPlan:
    """Draws ``num_pairs`` pairs over identities ``first_identity .. first_identity +
    num_identities - 1`` in the real sets' layout: 10 folds of ``num_pairs / 10`` pairs, each
    fold its matched half first, then its unmatched half."""
    if kind not in PAIR_KINDS:
        raise UnknownName("pair kind", kind, sorted(PAIR_KINDS))
    if num_pairs <= 0 or num_pairs % (2 * VERIFICATION_FOLDS):
        raise ValueError(f"num_pairs must be a positive multiple of {2 * VERIFICATION_FOLDS} "
                         f"(10 folds, each half matched), got {num_pairs}")
    if num_identities < 2 or first_identity < 0:
        raise ValueError(f"need first_identity >= 0 and num_identities >= 2, got "
                         f"{first_identity} and {num_identities}")
    rng = np.random.default_rng([seed, _PAIR_STREAM, list(PAIR_KINDS).index(kind), first_identity])
    half = num_pairs // (2 * VERIFICATION_FOLDS)
    issame = np.tile(np.repeat([True, False], half), VERIFICATION_FOLDS)
    first = rng.integers(0, num_identities, num_pairs)
    # A different identity for unmatched pairs: shift by 1 .. num_identities - 1 (never 0).
    other = (first + rng.integers(1, num_identities, num_pairs)) % num_identities
    identities = first_identity + np.stack([first, np.where(issame, first, other)], 1)
    # Every image of a set gets its own index, so no image appears twice.
    indices = np.arange(2 * num_pairs, dtype=np.int64).reshape(num_pairs, 2)
    return PairPlan(kind, identities.astype(np.int64), indices, issame, PAIR_KINDS[kind])


def render_pairs(faces: SyntheticFaces, plan: PairPlan, start: int = 0,
                 stop: int | None = None) -> np.ndarray:
    """Images of pairs ``start .. stop - 1`` of ``plan``, the two of each pair adjacent, as
    insightface's .bin files store them: uint8 [2 * (stop - start), 112, 112, 3]."""
    stop = len(plan.issame) if stop is None else stop
    return np.stack([faces.render(int(plan.identities[i, j]), int(plan.indices[i, j]),
                                  plan.variants[j])
                     for i in range(start, stop) for j in (0, 1)])


def make_pairs(kind: str, num_pairs: int, first_identity: int, num_identities: int,
               seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY
               ) -> tuple[np.ndarray, np.ndarray]:
    """A verification set: (images uint8 [2N, 112, 112, 3] RGB, issame bool [N])."""
    plan = plan_pairs(kind, num_pairs, first_identity, num_identities, seed)
    return render_pairs(SyntheticFaces(seed, difficulty), plan), plan.issame
