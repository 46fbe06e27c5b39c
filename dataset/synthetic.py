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

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from evaluation.verification import evaluate_verification

IMAGE_SIZE = 112
DEFAULT_DIFFICULTY = 0.5
VERIFICATION_FOLDS = 10
_SUB = 4  # cv2 drawing takes fixed-point coordinates with this many fraction bits
_SCALE = 1 << _SUB
_TRAIT_STREAM, _IMAGE_STREAM, _PAIR_STREAM = 1, 2, 3  # keep the RNG streams of each use apart

# Maximum nuisance at difficulty 1; each image draws a fraction of these (times the difficulty).
_NUISANCE = dict(
    rotation_deg=15.0, log_scale=0.14, shift_px=7.0, light_gradient=0.45, light_gain=0.25,
    colour_cast=0.12, blur_sigma=1.2, noise_sigma=12.0, occlusion_prob=0.35, jpeg_prob=0.5,
    blink=0.8, mouth_open=1.0, smile=1.0,
)
# Background and clothes are fully random from this difficulty up: they defeat raw pixels yet
# cost a network little to ignore, so they saturate early while the harder nuisance keeps growing.
_SCENE_SATURATION = 0.5
_MAX_YAW_RAD = 1.3  # a yaw of 1.0 turns the head ~75 degrees: the far eye vanishes


@dataclass(frozen=True)
class Variant:
    """Pose and age distribution of one kind of image; both ranges are multiplied by difficulty."""

    code: int
    yaw: tuple[float, float]  # range of |yaw|, 1.0 = _MAX_YAW_RAD
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


@dataclass(frozen=True, eq=False)  # array fields: compare traits by identity, not value
class Traits:
    """What makes an identity; lengths are pixels of the 112x112 canonical frame."""

    face_a: float  # half width of the head
    face_b: float  # half height of the head
    jaw: float  # how much the lower face narrows toward the chin
    skin: np.ndarray
    pattern: np.ndarray  # 5x5 grid of skin brightness factors, upsampled over the face
    hair: np.ndarray
    hair_top: float  # hair volume above the skull
    hairline: float  # height of the hairline as a fraction of face_b above the centre
    hair_curve: float  # hairline shape: >0 arched, <0 widow's peak
    hair_long: float  # how far below the ears the hair falls (0 = short)
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: np.ndarray
    brow_gap: float
    brow_len: float
    brow_thick: int
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: np.ndarray
    lip_thick: int
    ear: float
    glasses: int  # 0 none, 1 round, 2 square
    glasses_colour: np.ndarray
    beard: int  # 0 none, 1 moustache, 2 full
    mole: tuple[float, float] | None


@functools.lru_cache(maxsize=8192)
def identity_traits(seed: int, identity: int) -> Traits:
    """The traits of one identity: the same ``(seed, identity)`` always gives the same face."""
    rng = np.random.default_rng([seed, _TRAIT_STREAM, identity])
    u = rng.uniform
    skin_tone = u()
    skin = (1 - skin_tone) * np.array([238, 198, 172]) + skin_tone * np.array([98, 62, 42])
    skin = skin * u(0.93, 1.07) + rng.normal(0, 4, 3)  # mostly brightness: skin hues stay plausible
    hair_palette = np.array([[25, 20, 18], [85, 50, 28], [150, 100, 55], [215, 180, 110],
                             [160, 65, 30], [120, 120, 125]], float)
    iris_palette = np.array([[70, 40, 20], [60, 110, 170], [70, 120, 70], [110, 115, 120]], float)
    face_a, face_b = u(25, 35), u(31, 41)
    return Traits(
        face_a=face_a, face_b=face_b, jaw=u(0.0, 0.4),
        skin=np.clip(skin, 0, 255),
        pattern=rng.uniform(0.85, 1.15, (5, 5)).astype(np.float32),
        hair=np.clip(hair_palette[rng.integers(len(hair_palette))] + rng.normal(0, 12, 3), 0, 255),
        hair_top=u(1, 10), hairline=u(0.25, 0.7) if u() > 0.1 else 0.95, hair_curve=u(-1, 1),
        hair_long=u(0, 1) if u() < 0.4 else 0.0,
        eye_y=u(-0.2, 0.05) * face_b, eye_dx=u(0.3, 0.48) * face_a, eye_w=u(4.5, 7.5),
        eye_h=u(2.2, 3.8), eye_tilt=u(-12, 12),
        iris=iris_palette[rng.integers(len(iris_palette))] + rng.normal(0, 10, 3),
        brow_gap=u(4.5, 9), brow_len=u(7, 13), brow_thick=int(rng.integers(2, 5)),
        brow_tilt=u(-18, 18), nose_len=u(0.22, 0.42) * face_b, nose_w=u(3, 8),
        mouth_y=u(0.42, 0.62) * face_b, mouth_w=u(7, 15),
        lip=np.clip(skin * u(0.55, 0.8) + np.array([60, 0, 10]) * u(), 0, 255),
        lip_thick=int(rng.integers(1, 4)), ear=u(4, 8),
        glasses=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        glasses_colour=rng.uniform(0, 200, 3),
        beard=int(rng.choice(3, p=[0.75, 0.12, 0.13])),
        mole=(u(-0.6, 0.6), u(-0.3, 0.7)) if u() < 0.4 else None,
    )


def _arc(start: float, stop: float, count: int, endpoint: bool = True) -> np.ndarray:
    angles = np.linspace(start, stop, count, endpoint=endpoint)
    return np.stack([np.cos(angles), np.sin(angles)], 1)


# Unit shapes computed once (image y points down, so angles in (0, pi) are the lower half).
_RING = _arc(0, 2 * np.pi, 48, endpoint=False)  # head outline
_TOP = _arc(np.pi, 2 * np.pi, 25)  # top of the skull, left to right
_CHIN = _arc(0.15, np.pi - 0.15, 20)  # lower face, right to left
_SPAN = np.linspace(-1, 1, 17)  # hairline samples across the face


def _fx(x: float, y: float) -> tuple[int, int]:
    """A canvas point in cv2's fixed-point form (sub-pixel anti-aliased drawing)."""
    return int(round(x * _SCALE)), int(round(y * _SCALE))


def _ellipse(img, cx, cy, ax, ay, angle, colour, thickness=-1):
    cv2.ellipse(img, _fx(cx, cy), _fx(max(ax, 0.3), max(ay, 0.3)), angle, 0, 360,
                tuple(map(float, colour)), thickness, cv2.LINE_AA, _SUB)


def _poly(img, pts, colour, closed=True, thickness=-1):
    pts = np.round(np.asarray(pts) * _SCALE).astype(np.int32)
    if thickness < 0:
        cv2.fillPoly(img, [pts], tuple(map(float, colour)), cv2.LINE_AA, _SUB)
    else:
        cv2.polylines(img, [pts], closed, tuple(map(float, colour)), thickness, cv2.LINE_AA, _SUB)


class _Head:
    """Maps face coordinates (origin at the head centre) to the canvas, turning the head by a
    yaw: points on the face lie on a vertical cylinder of the head's half width."""

    def __init__(self, cx: float, radius: float, yaw: float):
        self.cx, self.radius, self.psi = cx, radius, yaw * _MAX_YAW_RAD

    def _angle(self, x: float) -> float:
        return math.asin(min(max(x / self.radius, -1.0), 1.0)) + self.psi

    def x(self, x: float, depth: float = 0.0) -> float:
        return self.cx + (self.radius + depth) * math.sin(self._angle(x))

    def xs(self, xs: np.ndarray) -> np.ndarray:
        return self.cx + self.radius * np.sin(np.arcsin(np.clip(xs / self.radius, -1, 1)) + self.psi)

    def squeeze(self, x: float) -> float:
        """How much a feature at face x is foreshortened by the turn (1 = facing the camera)."""
        turned = self._angle(x)
        return max(math.cos(turned), 0.0) / max(math.cos(turned - self.psi), 0.2)


def _draw_face(img: np.ndarray, t: Traits, yaw: float, age: float, eye_open: float,
               mouth_open: float, smile: float) -> np.ndarray:
    """Draws the head of ``t`` onto ``img`` (float32 canvas), turned by ``yaw`` and aged;
    returns the identity's skin pattern as a [112, 112] brightness factor for the caller."""
    a, b = t.face_a * (1 + 0.06 * age), t.face_b
    cx, cy = IMAGE_SIZE / 2, IMAGE_SIZE / 2 + 4
    head = _Head(cx, a, yaw)
    hair = t.hair + (np.array([185.0, 185, 188]) - t.hair) * 0.75 * age  # greying
    skin = t.skin * (1 - 0.08 * age)
    shade = skin * 0.72
    # The silhouette turns less than the features: it is the outline of the whole skull.
    ox = cx + 0.18 * a * np.sin(head.psi)
    if t.hair_long > 0:
        _ellipse(img, ox - 0.3 * a * np.sin(head.psi), cy + 0.2 * b * t.hair_long, a + 4,
                 b * (0.9 + 0.35 * t.hair_long), 0, hair)
    for side in (-1, 1):  # ears, hidden behind the head as it turns away
        ang = side * np.pi / 2 + head.psi
        if abs(ang) < np.pi / 2 + 0.25:
            _ellipse(img, cx + a * np.sin(ang), cy - 0.02 * b, t.ear * abs(np.cos(ang)) + 1.5,
                     t.ear * 1.5, 0, shade)
    jaw = (t.jaw - 0.12 * age) * np.clip(_RING[:, 1], 0, None) ** 2
    outline = np.stack([ox + a * _RING[:, 0] * (1 - jaw), cy + b * _RING[:, 1]], 1)
    _poly(img, outline, skin)
    # A skin pattern fixed to the identity: a low-frequency brightness field inside the outline,
    # returned so that the caller folds it into the lighting (one multiply over the image).
    x0, y0 = int(ox - a), int(cy - b)
    w, h = int(2 * a) + 1, int(2 * b) + 1
    mask = np.zeros((h, w), np.uint8)
    _poly(mask, outline - (x0, y0), (1,))
    skin_field = np.ones(img.shape[:2], np.float32)
    pattern = cv2.resize(t.pattern, (w, h), interpolation=cv2.INTER_CUBIC)
    skin_field[y0:y0 + h, x0:x0 + w] = np.where(mask > 0, pattern, np.float32(1))
    # Hair cap: the skull's top arc closed by the hairline, which recedes with age.
    line_y = cy - b * min(t.hairline + 0.25 * age, 0.98)
    xs = a * _SPAN[::-1]  # right to left, continuing the skull's arc
    hairline = line_y - t.hair_curve * 0.25 * b * (1 - _SPAN ** 2)
    cap = np.concatenate([
        np.stack([ox + (a + 1.5) * _TOP[:, 0], cy + (b + t.hair_top) * _TOP[:, 1]], 1),
        np.stack([head.xs(xs), hairline], 1)])
    _poly(img, cap, hair)
    if t.beard:
        narrowing = (t.jaw - 0.12 * age) * _CHIN[:, 1] ** 2
        bottom = np.stack([ox + a * _CHIN[:, 0] * (1 - narrowing), cy + b * _CHIN[:, 1]], 1)
        if t.beard == 2:
            _poly(img, np.concatenate([bottom, [[head.x(-0.8 * a), cy + 0.2 * b],
                                                [head.x(0.8 * a), cy + 0.2 * b]]]), hair * 0.8)
        _ellipse(img, head.x(0), cy + t.mouth_y - 4, t.mouth_w * 0.8 * head.squeeze(0), 2.5, 0,
                 hair * 0.8)
    for side in (-1, 1):
        ex, ey = side * t.eye_dx, cy + t.eye_y
        sq = head.squeeze(ex)
        if sq < 0.08:
            continue
        px = head.x(ex)
        brow_half = t.brow_len / 2 * sq
        lift = np.tan(np.radians(t.brow_tilt)) * t.brow_len / 2
        _poly(img, [[px - brow_half, ey - t.eye_h - t.brow_gap + side * lift],
                    [px + brow_half, ey - t.eye_h - t.brow_gap - side * lift]], hair * 0.75,
              closed=False, thickness=t.brow_thick)
        eh = t.eye_h * eye_open * (1 - 0.2 * age)
        _ellipse(img, px, ey, t.eye_w * sq, eh, side * t.eye_tilt, (245, 245, 240))
        _ellipse(img, px, ey, 2.6 * sq, min(2.6, eh), 0, t.iris)
        _ellipse(img, px, ey, 1.1 * sq, min(1.1, eh), 0, (15, 15, 15))
        _ellipse(img, px, ey, t.eye_w * sq, eh, side * t.eye_tilt, shade * 0.6, 1)
        if t.glasses:
            r = t.eye_w + 3
            if t.glasses == 1:
                _ellipse(img, px, ey, r * sq, r * 0.85, 0, t.glasses_colour, 1)
            else:
                _poly(img, [[px - r * sq, ey - r * 0.7], [px + r * sq, ey - r * 0.7],
                            [px + r * sq, ey + r * 0.7], [px - r * sq, ey + r * 0.7]],
                      t.glasses_colour, thickness=1)
    if t.glasses:
        inner = t.eye_dx - t.eye_w - 3
        _poly(img, [[head.x(-inner), cy + t.eye_y - 2], [head.x(inner), cy + t.eye_y - 2]],
              t.glasses_colour, closed=False, thickness=1)
    # The nose tip stands out from the cylinder, so it swings further than the eyes.
    nose_top, nose_tip = cy + t.eye_y + 2, cy + t.eye_y + 2 + t.nose_len
    tip_x = head.x(0, depth=0.25 * a)
    _poly(img, [[head.x(0), nose_top], [tip_x + t.nose_w * 0.3, nose_tip],
                [tip_x - t.nose_w * 0.7, nose_tip]], shade)
    my = cy + t.mouth_y
    left, right = head.x(-t.mouth_w), head.x(t.mouth_w)
    mid, half = (left + right) / 2, (right - left) / 2
    curve = smile * 4.0
    _ellipse(img, mid, my - curve * 0.5, half, max(t.lip_thick + 3 * mouth_open, 1.0), 0, t.lip)
    if mouth_open > 0.15:
        _ellipse(img, mid, my - curve * 0.5, half * 0.7, 2.5 * mouth_open, 0, (60, 20, 25))
    _poly(img, [[left, my - curve], [mid, my], [right, my - curve]], t.lip * 0.6,
          closed=False, thickness=1)
    if age > 0.05:  # wrinkles: forehead lines and nasolabial folds
        wrinkle = skin * (1 - 0.35 * age)
        for k in range(3):
            wy = line_y + (k + 1) * 0.22 * (cy + t.eye_y - t.brow_gap - line_y)
            _poly(img, [[head.x(-0.5 * a), wy], [head.x(0), wy - 1.5], [head.x(0.5 * a), wy]],
                  wrinkle, closed=False, thickness=1)
        for side in (-1, 1):
            _poly(img, [[head.x(side * (t.nose_w + 2)), nose_tip - 2],
                        [head.x(side * (t.mouth_w + 3)), my + 4]], wrinkle, False, 1)
    if t.mole is not None:
        _ellipse(img, head.x(t.mole[0] * a), cy + t.mole[1] * b, 1.6, 1.6, 0, (60, 40, 30))
    return skin_field


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
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        if identity < 0 or index < 0:
            raise ValueError(f"identity and index must be non-negative, got {identity}, {index}")
        spec, d, n = VARIANTS[variant], self.difficulty, _NUISANCE
        rng = np.random.default_rng([self.seed, _IMAGE_STREAM, identity, index, spec.code])
        u = rng.uniform
        traits = identity_traits(self.seed, identity)
        grey = np.array([128.0, 128, 128])
        img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        # Background and clothes: large areas that change per image and say nothing of identity.
        # (A filled rectangle paints the canvas 7x faster than numpy's 3-channel broadcast.)
        scene = min(1.0, d / _SCENE_SATURATION)
        background = grey + scene * (rng.uniform(20, 235, 3) - grey)
        cv2.rectangle(img, (0, 0), (IMAGE_SIZE, IMAGE_SIZE), tuple(map(float, background)), -1)
        clothes = grey + scene * (rng.uniform(0, 255, 3) - grey)
        _ellipse(img, IMAGE_SIZE / 2 + u(-6, 6) * scene, IMAGE_SIZE + 8, 46, 26, 0, clothes)
        yaw = d * u(*spec.yaw) * (1 if u() < 0.5 else -1)
        age = d * u(*spec.age)
        skin_field = _draw_face(img, traits, yaw, age, eye_open=1 - d * n["blink"] * u() ** 2,
                                mouth_open=d * n["mouth_open"] * max(u(-1, 1), 0),
                                smile=d * n["smile"] * u(-1, 1))
        return _degrade(_light_and_pose(img, skin_field, rng, d), rng, d)


def _light_and_pose(img: np.ndarray, skin_field: np.ndarray, rng: np.random.Generator,
                    d: float) -> np.ndarray:
    """Lighting (a linear gradient in a random direction, a gain and a per-channel cast, times
    the identity's skin pattern), then rotation, scale and shift about the image centre."""
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
                          borderMode=cv2.BORDER_REFLECT_101)


def _degrade(img: np.ndarray, rng: np.random.Generator, d: float) -> np.ndarray:
    """Occlusion, blur, sensor noise and JPEG loss; float32 canvas in, uint8 image out."""
    u, n = rng.uniform, _NUISANCE
    if u() < d * n["occlusion_prob"]:  # a patch over part of the face (a hand, a scarf)
        w, h = u(15, 45), u(10, 35)
        x, y = u(20, 92 - w / 2), u(25, 95 - h / 2)
        _ellipse(img, x, y, w / 2, h / 2, u(0, 180), rng.uniform(0, 255, 3))
    sigma = d * n["blur_sigma"] * u()
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    # Uniform 8-bit noise (std 73.9) scaled to the drawn sigma: 3x faster than normal draws.
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
        raise ValueError(f"unknown pair kind {kind!r}; choose one of {sorted(PAIR_KINDS)}")
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


def raw_pixel_baseline(images: np.ndarray, issame: np.ndarray) -> float:
    """Verification accuracy of cosine similarity between raw pixels (scaled as the network sees
    them, (x / 255 - 0.5) / 0.5) under insightface's 10-fold best-threshold protocol."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) != 2 * len(issame):
        raise ValueError(f"need images [2N, H, W, C] for {len(issame)} pairs, got {images.shape}")
    cosine = np.empty(len(issame))
    for start in range(0, len(issame), 256):  # in chunks: a whole set as float is gigabytes
        flat = images[2 * start:2 * start + 512].reshape(-1, 2, images[0].size)
        flat = flat.astype(np.float32) / 127.5 - 1.0
        flat /= np.maximum(np.linalg.norm(flat, axis=2, keepdims=True), 1e-12)
        cosine[start:start + 256] = np.einsum("ij,ij->i", flat[:, 0], flat[:, 1])
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    # Each pair becomes two unit vectors in the plane at the pair's angle: the protocol sees the
    # same squared distances (2 - 2 cos) without 37,632-dimensional embeddings for every image.
    embeddings = np.zeros((len(images), 2))
    embeddings[0::2, 0] = 1.0
    embeddings[1::2] = np.stack([np.cos(angle), np.sin(angle)], 1)
    return evaluate_verification(embeddings, issame, protocol="insightface").accuracy_mean

