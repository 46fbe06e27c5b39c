"""Drawing one synthetic face: an identity's traits, and the face rendered from them at a given pose,
age and expression (dataset/synthetic.py adds the scene, lighting and image nuisance around it)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_SIZE = 112
_SUB = 4  # cv2 drawing takes fixed-point coordinates with this many fraction bits
_SCALE = 1 << _SUB
TRAIT_STREAM = 1  # the RNG stream of identity traits (synthetic.py's images and pairs use others)
MAX_YAW_RAD = 1.3  # a yaw of 1.0 turns the head ~75 degrees: the far eye vanishes


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
    rng = np.random.default_rng([seed, TRAIT_STREAM, identity])
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


def ellipse(img, cx, cy, ax, ay, angle, colour, thickness=-1):
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
        self.cx, self.radius, self.psi = cx, radius, yaw * MAX_YAW_RAD

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


def _placement(t: Traits, yaw: float, age: float) -> tuple[float, float, float, _Head]:
    """(half width, centre x, centre y, head) of ``t`` drawn at this yaw and age."""
    a = t.face_a * (1 + 0.06 * age)
    cx, cy = IMAGE_SIZE / 2, IMAGE_SIZE / 2 + 4
    return a, cx, cy, _Head(cx, a, yaw)


def face_landmarks(t: Traits, yaw: float, age: float, smile: float) -> np.ndarray:
    """float64 [5, 2]: where ``draw_face`` puts the left eye, right eye, nose tip and left and
    right mouth corner (x then y, canvas pixels; left = smaller x), the five points face
    detectors report and ``dataset.align_face`` aligns by."""
    a, _, cy, head = _placement(t, yaw, age)
    eye_y, mouth_y = cy + t.eye_y, cy + t.mouth_y - smile * 4.0
    return np.array([[head.x(-t.eye_dx), eye_y], [head.x(t.eye_dx), eye_y],
                     [head.x(0, depth=0.25 * a), cy + t.eye_y + 2 + t.nose_len],
                     [head.x(-t.mouth_w), mouth_y], [head.x(t.mouth_w), mouth_y]])


def draw_face(img: np.ndarray, t: Traits, yaw: float, age: float, eye_open: float,
               mouth_open: float, smile: float) -> np.ndarray:
    """Draws the head of ``t`` onto ``img`` (float32 canvas), turned by ``yaw`` and aged;
    returns the identity's skin pattern as a [112, 112] brightness factor for the caller."""
    a, cx, cy, head = _placement(t, yaw, age)
    b = t.face_b
    hair = t.hair + (np.array([185.0, 185, 188]) - t.hair) * 0.75 * age  # greying
    skin = t.skin * (1 - 0.08 * age)
    shade = skin * 0.72
    # The silhouette turns less than the features: it is the outline of the whole skull.
    ox = cx + 0.18 * a * np.sin(head.psi)
    if t.hair_long > 0:
        ellipse(img, ox - 0.3 * a * np.sin(head.psi), cy + 0.2 * b * t.hair_long, a + 4,
                 b * (0.9 + 0.35 * t.hair_long), 0, hair)
    for side in (-1, 1):  # ears, hidden behind the head as it turns away
        ang = side * np.pi / 2 + head.psi
        if abs(ang) < np.pi / 2 + 0.25:
            ellipse(img, cx + a * np.sin(ang), cy - 0.02 * b, t.ear * abs(np.cos(ang)) + 1.5,
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
        ellipse(img, head.x(0), cy + t.mouth_y - 4, t.mouth_w * 0.8 * head.squeeze(0), 2.5, 0,
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
        ellipse(img, px, ey, t.eye_w * sq, eh, side * t.eye_tilt, (245, 245, 240))
        ellipse(img, px, ey, 2.6 * sq, min(2.6, eh), 0, t.iris)
        ellipse(img, px, ey, 1.1 * sq, min(1.1, eh), 0, (15, 15, 15))
        ellipse(img, px, ey, t.eye_w * sq, eh, side * t.eye_tilt, shade * 0.6, 1)
        if t.glasses:
            r = t.eye_w + 3
            if t.glasses == 1:
                ellipse(img, px, ey, r * sq, r * 0.85, 0, t.glasses_colour, 1)
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
    ellipse(img, mid, my - curve * 0.5, half, max(t.lip_thick + 3 * mouth_open, 1.0), 0, t.lip)
    if mouth_open > 0.15:
        ellipse(img, mid, my - curve * 0.5, half * 0.7, 2.5 * mouth_open, 0, (60, 20, 25))
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
        ellipse(img, head.x(t.mole[0] * a), cy + t.mole[1] * b, 1.6, 1.6, 0, (60, 40, 30))
    return skin_field
