"""Rendering the toy world with numpy: keyframes, motion clips, face photos and face boxes.

Everything is drawn with hard-edged primitives (ellipse, rectangle, capsule, convex polygon) on a
float canvas at `SUPERSAMPLE` x the target size and then area-averaged down, which gives
anti-aliased shapes that stay legible at 32x32. Each primitive only touches its bounding box, and
textures are computed for the whole canvas at once, so a 32 px keyframe takes about a millisecond.

Coordinates: a shot is laid out in *frame units* (0..1 across and down the frame). The camera
(wide/medium/close-up) sets the figures' scale; a view transform (zoom about the centre + pan)
applies camera motion in clips and a little random jitter. The background lives in its own
*background units* that zoom with the camera, so a close-up also shows a closer background.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mdream.toyworld.episode import ShotSpec
from mdream.toyworld.world import (
    EXPRESSIONS,
    EYE_COLOURS,
    HAIR_COLOURS,
    HEIGHTS,
    OUTFIT_COLOURS,
    SKIN_TONES,
    TROUSER_COLOURS,
    CharacterSpec,
    SceneSpec,
    World,
    make_world,
)

SUPERSAMPLE = 2
"""Internal resolution factor; shapes are drawn at size * SUPERSAMPLE then area-averaged."""
SIZES = (32, 64, 128)
FACE_SIZE = 112

Color = tuple[float, float, float] | np.ndarray

# Screen x of each position, per camera (close-ups pull the outer figures in a little).
_POSITION_X = {
    "wide": {"left": 0.2, "center": 0.5, "right": 0.8},
    "medium": {"left": 0.19, "center": 0.5, "right": 0.81},
    "close-up": {"left": 0.22, "center": 0.5, "right": 0.78},
}
# Figure height (frame units, for the tallest character) per camera.
_FIGURE_SCALE = {"wide": 0.5, "medium": 0.95, "close-up": 1.25}
# Background zoom and where the horizon lands on screen (offset from the scene's horizon).
_BACKGROUND_VIEW = {"wide": (1.0, 0.0), "medium": (1.7, 0.06), "close-up": (2.8, 0.14)}
# Lighting per time of day: multiplies the background fully and the figures partly.
_TIME_TINT = {
    "dawn": np.array([1.0, 0.9, 0.92], np.float32),
    "day": np.array([1.0, 1.0, 1.0], np.float32),
    "dusk": np.array([1.0, 0.84, 0.74], np.float32),
    "night": np.array([0.62, 0.68, 0.9], np.float32),
}
_TROUSERS = tuple(TROUSER_COLOURS.values())
_EYE_WHITE = (250, 250, 250)
_PUPIL = (15, 15, 20)
_MOUTH = (150, 40, 50)


class _Canvas:
    """A float32 RGB canvas with an isotropic affine map from drawing units to pixels."""

    def __init__(self, res: int, background: Color = (0, 0, 0)):
        self.res = res
        self.img = np.empty((res, res, 3), np.float32)  # [R, R, 3], values 0..255
        self.img[:] = np.asarray(background, np.float32)
        self.scale, self.ox, self.oy = float(res), 0.0, 0.0
        self.tint = np.ones(3, np.float32)
        self._centres = np.arange(res, dtype=np.float32) + 0.5  # pixel centres

    def set_map(self, scale: float, ox: float, oy: float) -> None:
        """Drawing units -> pixels: X = x * scale + ox, Y = y * scale + oy."""
        self.scale, self.ox, self.oy = scale, ox, oy

    def _px(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale + self.ox, y * self.scale + self.oy

    def _box(self, x0: float, y0: float, x1: float, y1: float):
        """Clip a pixel box to the canvas; returns slices and pixel-centre coordinates, or None."""
        i0, i1 = max(math.floor(y0), 0), min(math.ceil(y1), self.res)
        j0, j1 = max(math.floor(x0), 0), min(math.ceil(x1), self.res)
        if i0 >= i1 or j0 >= j1:
            return None
        ys = self._centres[i0:i1, None]  # [h, 1]
        xs = self._centres[None, j0:j1]  # [1, w]
        return (slice(i0, i1), slice(j0, j1)), xs, ys

    def _paint(self, sl, mask: np.ndarray, color: Color, pattern=None, xs=None, ys=None) -> None:
        region = self.img[sl]
        c1 = np.asarray(color, np.float32) * self.tint
        if pattern is None:
            region[mask] = c1
            return
        kind, color2, period, ox, oy = pattern
        alt = _pattern_mask(kind, xs - ox, ys - oy, period)
        c2 = np.asarray(color2, np.float32) * self.tint
        region[mask & ~alt] = c1
        region[mask & alt] = c2

    def ellipse(self, cx, cy, rx, ry, color, pattern=None, y_max=None, y_min=None) -> None:
        """Fill an axis-aligned ellipse, optionally only its part with y_min <= y <= y_max."""
        X, Y = self._px(cx, cy)
        RX, RY = max(rx * self.scale, 0.5), max(ry * self.scale, 0.5)
        box = self._box(X - RX, Y - RY, X + RX, Y + RY)
        if box is None:
            return
        sl, xs, ys = box
        mask = ((xs - X) / RX) ** 2 + ((ys - Y) / RY) ** 2 <= 1.0
        if y_max is not None:
            mask &= ys <= self._px(0, y_max)[1]
        if y_min is not None:
            mask &= ys >= self._px(0, y_min)[1]
        self._paint(sl, mask, color, _pattern_px(self, pattern), xs, ys)

    def rect(self, x0, y0, x1, y1, color, pattern=None) -> None:
        """Fill an axis-aligned rectangle."""
        X0, Y0 = self._px(x0, y0)
        X1, Y1 = self._px(x1, y1)
        box = self._box(X0, Y0, X1, Y1)
        if box is None:
            return
        sl, xs, ys = box
        mask = (xs >= X0) & (xs < X1) & (ys >= Y0) & (ys < Y1)
        self._paint(sl, mask, color, _pattern_px(self, pattern), xs, ys)

    def capsule(self, xa, ya, xb, yb, r, color) -> None:
        """Fill a thick segment with round ends (limbs)."""
        XA, YA = self._px(xa, ya)
        XB, YB = self._px(xb, yb)
        R = max(r * self.scale, 0.5)
        box = self._box(min(XA, XB) - R, min(YA, YB) - R, max(XA, XB) + R, max(YA, YB) + R)
        if box is None:
            return
        sl, xs, ys = box
        dx, dy = XB - XA, YB - YA
        t = np.clip(((xs - XA) * dx + (ys - YA) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        mask = (xs - XA - t * dx) ** 2 + (ys - YA - t * dy) ** 2 <= R * R
        self._paint(sl, mask, color)

    def polygon(self, points, color, pattern=None) -> None:
        """Fill a convex polygon given as [(x, y), ...] in either winding order."""
        P = [self._px(x, y) for x, y in points]
        px = [p[0] for p in P]
        py = [p[1] for p in P]
        box = self._box(min(px), min(py), max(px), max(py))
        if box is None:
            return
        sl, xs, ys = box
        inside_pos = np.ones((ys.shape[0], xs.shape[1]), bool)
        inside_neg = np.ones_like(inside_pos)
        for (x0, y0), (x1, y1) in zip(P, P[1:] + P[:1], strict=True):
            cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
        self._paint(sl, inside_pos | inside_neg, color, _pattern_px(self, pattern), xs, ys)


def _pattern_px(canvas: _Canvas, pattern):
    """Convert a pattern's (kind, colour2, period, ox, oy) from drawing units to pixels."""
    if pattern is None or pattern[0] == "plain":
        return None
    kind, color2, period, ox, oy = pattern
    X, Y = canvas._px(ox, oy)
    return kind, color2, max(period * canvas.scale, 2.0), X, Y


def _pattern_mask(kind: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """Where the secondary colour goes, for pixel offsets x [1, w], y [h, 1] from the origin."""
    if kind == "stripes":  # horizontal bands
        return np.broadcast_to((y / period) % 1.0 < 0.45, np.broadcast_shapes(x.shape, y.shape))
    if kind == "vstripes":
        return np.broadcast_to((x / period) % 1.0 < 0.45, np.broadcast_shapes(x.shape, y.shape))
    if kind == "checks":
        return (np.floor(x / period) + np.floor(y / period)) % 2 == 1
    if kind == "dots":
        u, v = (x / period) % 1.0 - 0.5, (y / period) % 1.0 - 0.5
        return u * u + v * v < 0.09
    if kind == "sash":  # a diagonal band from the left shoulder to the right hip
        return np.abs((x - y) / period) < 0.6
    raise ValueError(f"unknown pattern {kind!r}")


def _contrast(color: Color) -> tuple[float, float, float]:
    """A pattern colour that shows on `color`: near-white on dark, near-black on light."""
    c = np.asarray(color, np.float32)
    luma = float(c @ np.array([0.299, 0.587, 0.114], np.float32))
    return (250.0, 250.0, 245.0) if luma < 150 else (30.0, 30.0, 40.0)


# --------------------------------------------------------------------------------------------
# Characters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pose:
    """A figure's pose, in units of its own height H (y grows downwards)."""

    dx: float = 0.0           # horizontal shift, frame units
    dy: float = 0.0           # body drop (>0 lower, <0 in the air), H units
    leg_swing: float = 0.0    # radians; left and right legs swing opposite
    arm_left: float = 0.25    # radians from hanging straight down, outwards positive
    arm_right: float = 0.25
    seated: bool = False
    bent_legs: bool = False


def _pose(action: str, phase: float, direction: float) -> _Pose:
    """The pose of `action` at `phase` in [0, 1]; phase 0 is the keyframe (first clip frame)."""
    tau = 2.0 * math.pi
    if action == "walk":  # translates across the frame, legs and arms swinging
        swing = 0.45 * math.cos(tau * 2.0 * phase)
        return _Pose(dx=direction * 0.12 * phase, dy=0.01 * abs(math.sin(tau * 2 * phase)), leg_swing=swing,
                     arm_left=0.2 + 0.3 * swing, arm_right=0.2 - 0.3 * swing)
    if action == "wave":  # one arm up, waving side to side
        return _Pose(arm_left=0.25, arm_right=2.5 + 0.45 * math.sin(tau * 2.0 * phase))
    if action == "jump":  # starts at the top of a bounce, lands, bounces again
        height = abs(math.cos(1.5 * math.pi * phase))
        return _Pose(dy=-0.22 * height, arm_left=0.5 + 1.8 * height, arm_right=0.5 + 1.8 * height,
                     bent_legs=height > 0.3)
    if action == "sit":  # lowers onto a stool
        return _Pose(dy=0.15 + 0.06 * min(1.0, phase * 1.5), seated=True, arm_left=0.35, arm_right=0.35)
    # stand: breathing
    return _Pose(dy=0.006 * math.sin(tau * phase))


def _draw_hair_back(cv: _Canvas, c: CharacterSpec, x: float, hy: float, H: float) -> None:
    hair = HAIR_COLOURS[c.hair_colour]
    r = 0.17 * H
    if c.hair_style == "long":  # straight, down past the shoulders
        cv.rect(x - 1.2 * r, hy - 0.2 * r, x + 1.2 * r, hy + 1.7 * r, hair)
        cv.ellipse(x, hy - 0.2 * r, 1.2 * r, 1.0 * r, hair)
    elif c.hair_style == "ponytail":
        cv.ellipse(x + 1.05 * r, hy + 0.2 * r, 0.4 * r, 0.85 * r, hair)
    elif c.hair_style == "curly":  # a round puff, wider than the head, with bumps around it
        cv.ellipse(x, hy - 0.35 * r, 1.3 * r, 1.15 * r, hair)
        for a in np.linspace(math.pi * 0.8, math.pi * 2.2, 9):
            cv.ellipse(x + 1.3 * r * math.cos(a), hy - 0.35 * r + 1.15 * r * math.sin(a), 0.3 * r, 0.3 * r, hair)


def _draw_head(cv: _Canvas, c: CharacterSpec, x: float, hy: float, H: float, expression: str) -> None:
    """Head centred at (x, hy) with radius 0.17 H: skin, hair cap and style, eyes, brows, mouth."""
    skin = SKIN_TONES[c.skin]
    hair = HAIR_COLOURS[c.hair_colour]
    r = 0.17 * H
    _draw_hair_back(cv, c, x, hy, H)
    cv.ellipse(x, hy, r, r * 1.02, skin)
    # Ears: little skin bumps that stay visible next to short hair.
    cv.ellipse(x - r, hy + 0.05 * r, 0.18 * r, 0.25 * r, skin)
    cv.ellipse(x + r, hy + 0.05 * r, 0.18 * r, 0.25 * r, skin)
    # The hair cap covers the top of the head down to the hairline.
    cv.ellipse(x, hy - 0.15 * r, 1.08 * r, 0.95 * r, hair, y_max=hy - 0.42 * r)
    if c.hair_style == "long":  # side locks framing the face
        cv.rect(x - 1.08 * r, hy - 0.6 * r, x - 0.78 * r, hy + 0.55 * r, hair)
        cv.rect(x + 0.78 * r, hy - 0.6 * r, x + 1.08 * r, hy + 0.55 * r, hair)
    if c.hair_style == "bun":
        cv.ellipse(x, hy - 1.2 * r, 0.45 * r, 0.4 * r, hair)
    elif c.hair_style == "spiky":
        for k in (-0.7, -0.23, 0.23, 0.7):
            cv.polygon([(x + (k - 0.3) * r, hy - 0.65 * r), (x + (k + 0.3) * r, hy - 0.65 * r),
                        (x + k * 1.15 * r, hy - 1.45 * r)], hair)
    elif c.hair_style == "short":
        cv.ellipse(x - 0.35 * r, hy - 0.5 * r, 0.6 * r, 0.22 * r, hair)  # a fringe
    # Eyes: white, iris in the eye colour, pupil.
    eye = EYE_COLOURS[c.eye_colour]
    for side in (-1.0, 1.0):
        ex = x + side * 0.38 * r
        cv.ellipse(ex, hy, 0.22 * r, 0.2 * r, _EYE_WHITE)
        cv.ellipse(ex, hy, 0.15 * r, 0.17 * r, eye)
        cv.ellipse(ex, hy, 0.06 * r, 0.07 * r, _PUPIL)
        # Brows in the hair colour; angry brows slant down towards the nose.
        if expression == "angry":
            cv.polygon([(ex - side * 0.25 * r, hy - 0.42 * r), (ex + side * 0.25 * r, hy - 0.32 * r),
                        (ex + side * 0.25 * r, hy - 0.22 * r), (ex - side * 0.25 * r, hy - 0.3 * r)], hair)
        else:
            lift = 0.1 * r if expression == "surprised" else 0.0
            cv.rect(ex - 0.24 * r, hy - 0.4 * r - lift, ex + 0.24 * r, hy - 0.3 * r - lift, hair)
    my = hy + 0.5 * r
    if expression == "happy":
        cv.ellipse(x, my - 0.05 * r, 0.32 * r, 0.2 * r, _MOUTH, y_min=my - 0.05 * r)
    elif expression == "sad":
        cv.ellipse(x, my + 0.12 * r, 0.3 * r, 0.18 * r, _MOUTH, y_max=my + 0.12 * r)
    elif expression == "surprised":
        cv.ellipse(x, my + 0.02 * r, 0.13 * r, 0.17 * r, _MOUTH)
    else:
        cv.rect(x - 0.25 * r, my - 0.035 * r, x + 0.25 * r, my + 0.05 * r, _MOUTH)


def _head_center(x: float, feet_y: float, H: float, dy: float) -> tuple[float, float]:
    return x, feet_y + (-0.80 + dy) * H


def _draw_figure(cv: _Canvas, c: CharacterSpec, x: float, feet_y: float, H: float, pose: _Pose,
                 expression: str, trousers: int = 0) -> None:
    """A chibi figure standing on (x, feet_y), of height H (drawing units), in `pose`, in trousers
    TROUSER_COLOURS[trousers]."""
    skin = SKIN_TONES[c.skin]
    trouser_colour = _TROUSERS[trousers]
    outfit = OUTFIT_COLOURS[c.outfit_colour]
    x = x + pose.dx
    dy = pose.dy * H
    hip_y = feet_y - 0.3 * H + dy
    if pose.seated:  # a stool under the hips, drawn first
        cv.rect(x - 0.17 * H, hip_y - 0.01 * H, x + 0.17 * H, hip_y + 0.05 * H, (120, 80, 45))
        cv.rect(x - 0.15 * H, hip_y + 0.05 * H, x - 0.11 * H, feet_y, (100, 65, 35))
        cv.rect(x + 0.11 * H, hip_y + 0.05 * H, x + 0.15 * H, feet_y, (100, 65, 35))
    # Legs
    leg_r = 0.055 * H
    for side in (-1.0, 1.0):
        hx = x + side * 0.07 * H
        if pose.seated:  # thighs towards the camera, shins down to the floor
            kx = x + side * 0.11 * H
            cv.capsule(hx, hip_y, kx, hip_y + 0.04 * H, leg_r * 1.1, trouser_colour)
            cv.capsule(kx, hip_y + 0.04 * H, kx, feet_y - 0.02 * H, leg_r, trouser_colour)
        else:
            length = 0.27 * H if not pose.bent_legs else 0.2 * H
            a = side * pose.leg_swing
            cv.capsule(hx, hip_y, hx + math.sin(a) * length, hip_y + math.cos(a) * length, leg_r, trouser_colour)
    # Arms (behind the torso's edge): shoulder -> hand at an angle from hanging down.
    shoulder_y = feet_y + (-0.6 + pose.dy) * H
    arm_len = 0.25 * H
    for side, angle in ((-1.0, pose.arm_left), (1.0, pose.arm_right)):
        sx = x + side * 0.15 * H
        hx, hy = sx + side * math.sin(angle) * arm_len, shoulder_y + math.cos(angle) * arm_len
        cv.capsule(sx, shoulder_y, hx, hy, 0.05 * H, outfit)
        cv.ellipse(hx, hy, 0.05 * H, 0.05 * H, skin)
    # Torso with the outfit pattern, then the neck.
    top, bottom = feet_y + (-0.64 + pose.dy) * H, hip_y + 0.02 * H
    pattern = (c.outfit_pattern, _contrast(outfit), 0.1 * H, x - 0.16 * H, top)
    cv.rect(x - 0.16 * H, top, x + 0.16 * H, bottom, outfit, pattern)
    cv.ellipse(x, top + 0.01 * H, 0.16 * H, 0.045 * H, outfit, y_max=top + 0.01 * H)
    cv.rect(x - 0.05 * H, top - 0.06 * H, x + 0.05 * H, top + 0.005 * H, skin)
    # Collar: a V in the pattern colour so the outfit shows in face crops too.
    cv.polygon([(x - 0.07 * H, top), (x + 0.07 * H, top), (x, top + 0.07 * H)], skin)
    hx, hy = _head_center(x, feet_y, H, pose.dy)
    _draw_head(cv, c, hx, hy, H, expression)


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------
def _hash_noise(u: np.ndarray, v: np.ndarray, cells: float) -> np.ndarray:
    """Cell noise in [0, 1): constant per cell of size 1/cells, stable under zoom.

    An integer hash (not the usual sin trick), so the texture is bit-identical on every CPU.
    """
    iu = np.floor(u * cells).astype(np.int64)
    iv = np.floor(v * cells).astype(np.int64)
    h = (iu * 73856093) ^ (iv * 19349663)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _draw_background(cv: _Canvas, scene: SceneSpec, zb: float, horizon_screen: float, zoom: float,
                     pan: tuple[float, float], margin: int = 0) -> None:
    """Sky/wall, ground/floor with textures, then the props, for a background zoom `zb`.

    The frame is `cv.res - 2 * margin` pixels wide, drawn with `margin` extra pixels on each side.
    """
    R = cv.res - 2 * margin
    h = scene.horizon
    # Background units -> pixels (composition of the background zoom and the shot's view).
    scale = zb * zoom * R
    ox = ((0.5 - 0.5 * zb) * zoom + 0.5 - 0.5 * zoom + pan[0]) * R + margin
    oy = ((horizon_screen - h * zb) * zoom + 0.5 - 0.5 * zoom + pan[1]) * R + margin
    R = cv.res
    grid = (np.arange(R, dtype=np.float32) + 0.5)
    u = ((grid - ox) / scale)[None, :]  # [1, R]
    v = ((grid - oy) / scale)[:, None]  # [R, 1]
    sky = np.asarray(scene.sky, np.float32)
    ground = np.asarray(scene.ground, np.float32)
    accent = np.asarray(scene.accent, np.float32)
    img = cv.img
    upper = np.broadcast_to(v < h, (R, R))
    # Upper part: a vertical gradient, lighter towards the horizon.
    t = np.clip(v / max(h, 1e-3), 0, 1)[..., None]  # [R, 1, 1]
    upper_col = sky * (0.82 + 0.18 * t) + (255 - sky) * 0.25 * t * (not scene.indoor)
    img[:] = np.where(upper[..., None], upper_col, ground)
    wt, gt = scene.wall_texture, scene.ground_texture
    strokes = np.zeros((R, R), bool)
    if wt == "bricks":
        row = np.floor(v / 0.05)
        strokes |= ((v / 0.05) % 1.0 < 0.12) | (((u / 0.1 + 0.5 * row) % 1.0) < 0.06)
    elif wt == "stripes":
        strokes |= np.broadcast_to((u / 0.06) % 1.0 < 0.35, (R, R))
    elif wt == "tiles":
        strokes |= ((u / 0.07) % 1.0 < 0.08) | ((v / 0.07) % 1.0 < 0.08)
    elif wt == "panels":
        strokes |= ((u / 0.2) % 1.0 < 0.03) | ((v / 0.15) % 1.0 < 0.04)
    img[upper & strokes] = accent if wt != "bricks" or scene.indoor else sky * 0.6 + accent * 0.4
    if scene.time_of_day == "night" and not scene.indoor:
        stars = (_hash_noise(u, v, 40) > 0.985) & upper
        img[stars] = (255, 255, 230)
    lower = ~upper
    depth = np.clip((v - h) / (1.0 - h), 0, 1)  # 0 at horizon, 1 at the bottom
    if gt == "grass":
        mask = (_hash_noise(u, v, 60) > 0.7) & lower
        img[mask] = ground * 0.75 + accent * 0.25
    elif gt == "sand":
        mask = (np.sin(u * 25 + np.sin(v * 40) * 2) > 0.85) & lower
        img[mask] = ground * 0.88
    elif gt == "waves":
        mask = (np.sin(v * 90 + np.sin(u * 30) * 1.5) > 0.6) & lower
        img[mask] = ground * 0.6 + 255 * 0.4
    elif gt == "checker":
        cell = (np.floor((u - 0.5) / (0.04 + 0.12 * depth) * 1.0) + np.floor((v - h) / 0.06)) % 2 == 1
        img[cell & lower] = accent
    elif gt == "planks":
        mask = ((v - h) / 0.05 % 1.0 < 0.1) | ((u / 0.25 + np.floor((v - h) / 0.05) * 0.37) % 1.0 < 0.02)
        img[mask & lower] = ground * 0.65
    elif gt == "snow":
        mask = (_hash_noise(u, v, 50) > 0.8) & lower
        img[mask] = (200, 215, 240)
    elif gt == "cobbles":
        mask = (np.sin(u * 120) * np.sin((v + 0.5 * (np.floor(u * 38) % 2) / 38) * 120) > 0.35) & lower
        img[mask] = ground * 0.8
    elif gt == "rug":
        rug = (np.abs(u - 0.5) < 0.3) & (v > h + 0.08) & lower
        img[rug] = accent
        inner = (np.abs(u - 0.5) < 0.26) & (v > h + 0.11) & lower
        img[inner] = ground * 0.6 + accent * 0.4
    if scene.indoor:  # a skirting board along the floor line
        img[np.broadcast_to(np.abs(v - h) < 0.012, (R, R))] = sky * 0.55
    cv.set_map(scale, ox, oy)
    for kind, x in scene.props:
        _draw_prop(cv, scene, kind, x)
    cv.img *= _TIME_TINT[scene.time_of_day]


def _draw_prop(cv: _Canvas, scene: SceneSpec, kind: str, x: float) -> None:
    """One prop in background units; `x` across, standing on the horizon/floor line."""
    h = scene.horizon
    acc = scene.accent
    night = scene.time_of_day == "night"
    wood, dark_wood = (140, 95, 55), (95, 60, 35)
    if kind == "tree":
        cv.rect(x - 0.02, h - 0.14, x + 0.02, h + 0.03, dark_wood)
        cv.ellipse(x, h - 0.2, 0.1, 0.1, (45, 130, 45))
        cv.ellipse(x + 0.04, h - 0.24, 0.06, 0.06, (60, 150, 55))
    elif kind == "pine":
        cv.rect(x - 0.015, h - 0.05, x + 0.015, h + 0.03, dark_wood)
        cv.polygon([(x - 0.08, h - 0.04), (x + 0.08, h - 0.04), (x, h - 0.36)], (25, 85, 40))
    elif kind == "bench":
        cv.rect(x - 0.09, h + 0.04, x + 0.09, h + 0.065, wood)
        cv.rect(x - 0.08, h + 0.065, x - 0.065, h + 0.1, dark_wood)
        cv.rect(x + 0.065, h + 0.065, x + 0.08, h + 0.1, dark_wood)
        cv.rect(x - 0.09, h, x + 0.09, h + 0.02, wood)
    elif kind == "sun":
        colour = (255, 235, 120) if scene.time_of_day == "day" else (255, 150, 70)
        cv.ellipse(x, 0.14, 0.06, 0.06, colour)
    elif kind == "sea":
        cv.rect(-2.0, h - 0.005, 3.0, h + 0.07, (40, 130, 205), ("stripes", (90, 170, 230), 0.02, 0.0, h))
    elif kind == "umbrella":
        cv.rect(x - 0.006, h - 0.12, x + 0.006, h + 0.08, (230, 230, 230))
        cv.polygon([(x - 0.12, h - 0.1), (x + 0.12, h - 0.1), (x, h - 0.2)], (230, 50, 50),
                   ("vstripes", (250, 250, 250), 0.04, x, 0))
    elif kind == "boat":
        cv.rect(x - 0.005, h - 0.22, x + 0.005, h - 0.03, dark_wood)
        cv.polygon([(x + 0.01, h - 0.21), (x + 0.01, h - 0.05), (x + 0.1, h - 0.05)], (245, 240, 225))
        cv.polygon([(x - 0.13, h - 0.04), (x + 0.13, h - 0.04), (x + 0.09, h + 0.02), (x - 0.09, h + 0.02)],
                   (170, 50, 40))
    elif kind == "crates":
        for dx, dy in ((-0.05, 0.0), (0.05, 0.0), (0.0, -0.09)):
            cv.rect(x + dx - 0.045, h + dy - 0.02, x + dx + 0.045, h + dy + 0.07, (180, 130, 70),
                    ("stripes", (130, 90, 50), 0.03, 0, h + dy))
    elif kind == "lamp":
        cv.rect(x - 0.008, h - 0.3, x + 0.008, h + 0.04, (40, 40, 45))
        cv.ellipse(x, h - 0.31, 0.03, 0.03, (255, 240, 150) if night else (220, 220, 200))
    elif kind == "house":
        roof = (240, 245, 255) if scene.ground_texture == "snow" else (150, 50, 40)
        cv.rect(x - 0.14, h - 0.2, x + 0.14, h + 0.02, acc if scene.ground_texture == "snow" else (190, 150, 110))
        cv.polygon([(x - 0.17, h - 0.2), (x + 0.17, h - 0.2), (x, h - 0.33)], roof)
        win = (255, 220, 110) if night or scene.time_of_day == "dusk" else (150, 200, 240)
        cv.rect(x - 0.1, h - 0.15, x - 0.04, h - 0.08, win)
        cv.rect(x + 0.04, h - 0.15, x + 0.1, h - 0.08, win)
        cv.rect(x - 0.025, h - 0.08, x + 0.025, h + 0.02, dark_wood)
    elif kind == "snowman":
        for cy, r in ((h + 0.0, 0.06), (h - 0.085, 0.045), (h - 0.15, 0.032)):
            cv.ellipse(x, cy, r, r, (250, 252, 255))
        cv.polygon([(x, h - 0.155), (x + 0.05, h - 0.145), (x, h - 0.14)], (245, 130, 30))
    elif kind == "cactus":
        green = (60, 150, 70)
        cv.capsule(x, h + 0.02, x, h - 0.2, 0.025, green)
        cv.capsule(x - 0.05, h - 0.12, x - 0.05, h - 0.06, 0.018, green)
        cv.capsule(x - 0.05, h - 0.06, x, h - 0.06, 0.018, green)
        cv.capsule(x + 0.05, h - 0.16, x + 0.05, h - 0.1, 0.018, green)
        cv.capsule(x + 0.05, h - 0.1, x, h - 0.1, 0.018, green)
    elif kind == "window":
        sky = {"day": (150, 210, 250), "dawn": (250, 190, 200), "dusk": (250, 150, 100), "night": (20, 25, 60)}
        cv.rect(x - 0.11, 0.12, x + 0.11, 0.38, (245, 245, 245))
        cv.rect(x - 0.095, 0.135, x + 0.095, 0.365, sky[scene.time_of_day])
        cv.rect(x - 0.006, 0.12, x + 0.006, 0.38, (245, 245, 245))
    elif kind == "table":
        cv.rect(x - 0.12, h - 0.04, x + 0.12, h - 0.02, wood)
        cv.rect(x - 0.11, h - 0.02, x - 0.095, h + 0.06, dark_wood)
        cv.rect(x + 0.095, h - 0.02, x + 0.11, h + 0.06, dark_wood)
    elif kind == "cupboard":
        cv.rect(x - 0.08, h - 0.3, x + 0.08, h + 0.0, acc)
        cv.rect(x - 0.004, h - 0.3, x + 0.004, h, (90, 120, 130))
        cv.rect(x - 0.03, h - 0.17, x - 0.015, h - 0.13, (240, 240, 240))
        cv.rect(x + 0.015, h - 0.17, x + 0.03, h - 0.13, (240, 240, 240))
    elif kind == "board":
        cv.rect(x - 0.2, 0.14, x + 0.2, 0.4, (150, 120, 80))
        cv.rect(x - 0.19, 0.15, x + 0.19, 0.39, acc)
        cv.rect(x - 0.15, 0.2, x + 0.05, 0.215, (230, 230, 230))
        cv.rect(x - 0.15, 0.26, x + 0.1, 0.275, (230, 230, 230))
    elif kind == "desk":
        cv.rect(x - 0.1, h - 0.01, x + 0.1, h + 0.06, wood)
    elif kind == "clock":
        cv.ellipse(x, 0.2, 0.045, 0.045, (60, 60, 60))
        cv.ellipse(x, 0.2, 0.037, 0.037, (250, 250, 250))
        cv.rect(x - 0.003, 0.17, x + 0.003, 0.2, (20, 20, 20))
    elif kind == "bookshelf":
        cv.rect(x - 0.12, h - 0.38, x + 0.12, h + 0.01, dark_wood)
        for k, shelf_y in enumerate((h - 0.36, h - 0.24, h - 0.12)):
            colours = ((180, 40, 40), (40, 80, 170)) if k % 2 == 0 else ((40, 140, 70), (220, 190, 60))
            cv.rect(x - 0.11, shelf_y, x + 0.11, shelf_y + 0.1, colours[0],
                    ("vstripes", colours[1], 0.03, x - 0.11, 0))
    elif kind == "banner":
        cv.rect(x - 0.05, 0.1, x + 0.05, 0.36, acc)
        cv.polygon([(x - 0.05, 0.36), (x + 0.05, 0.36), (x, 0.42)], acc)
        cv.ellipse(x, 0.2, 0.025, 0.025, (240, 200, 60))
    elif kind == "torch":
        cv.rect(x - 0.01, 0.28, x + 0.01, 0.38, dark_wood)
        cv.ellipse(x, 0.26, 0.025, 0.04, (255, 170, 40))
        cv.ellipse(x, 0.27, 0.012, 0.02, (255, 240, 150))
    elif kind == "porthole":
        cv.ellipse(x, 0.3, 0.12, 0.12, (170, 175, 185))
        cv.ellipse(x, 0.3, 0.1, 0.1, (10, 10, 35), ("dots", (250, 250, 255), 0.035, x, 0.3))
        cv.ellipse(x + 0.04, 0.27, 0.03, 0.03, (210, 120, 70))
    elif kind == "console":
        cv.rect(x - 0.15, h - 0.12, x + 0.15, h + 0.02, (110, 115, 125))
        cv.rect(x - 0.13, h - 0.1, x + 0.13, h - 0.06, (20, 30, 40), ("vstripes", acc, 0.03, x - 0.13, 0))
    elif kind == "stall":
        cv.rect(x - 0.12, h - 0.06, x + 0.12, h + 0.04, wood)
        cv.rect(x - 0.11, h - 0.24, x - 0.1, h - 0.06, dark_wood)
        cv.rect(x + 0.1, h - 0.24, x + 0.11, h - 0.06, dark_wood)
        cv.rect(x - 0.13, h - 0.28, x + 0.13, h - 0.22, acc, ("vstripes", (250, 250, 250), 0.04, x - 0.13, 0))
        for dx in (-0.07, 0.0, 0.07):
            cv.ellipse(x + dx, h - 0.075, 0.025, 0.02, (230, 60, 40) if dx else (250, 200, 40))


# --------------------------------------------------------------------------------------------
# Shots
# --------------------------------------------------------------------------------------------
def walk_direction(position: str) -> float:
    """Which way a walker at ``position`` goes across the frame: +1 rightwards (left and centre), -1 leftwards."""
    return -1.0 if position == "right" else 1.0


def _figure_placement(world: World, shot: ShotSpec, member) -> tuple[float, float, float]:
    """(x, feet_y, H) of a cast member in frame units, before pose and view."""
    c = world.character(member.character_id)
    h = HEIGHTS[c.height]
    H = _FIGURE_SCALE[shot.camera] * h
    x = _POSITION_X[shot.camera][member.position]
    if shot.camera == "wide":
        feet = 0.93
    elif shot.camera == "medium":
        feet = 0.12 + _FIGURE_SCALE["medium"]  # tall heads near the top; short ones lower
    else:  # close-up: the camera frames the faces, taller ones a little higher
        head_y = 0.5 - (h - HEIGHTS["medium"]) * 0.5
        feet = head_y + 0.8 * H
    return x, feet, H


_PAN_JITTER = 0.02  # of the frame: the largest random pan of a render
_CACHE_MARGIN = 0.1  # of the frame: how far a cached background reaches past the frame (jitter + camera pans)


def palette_variant(scene: SceneSpec, palette: int) -> SceneSpec:
    """The scene under hidden palette `palette` (world.PALETTES): its sky/wall colour's channels rotated."""
    if palette == 0:
        return scene
    r, g, b = scene.sky
    return dataclasses.replace(scene, sky=((g, b, r), (b, r, g))[palette - 1])


@functools.lru_cache(maxsize=256)
def _cached_background(scene: SceneSpec, camera: str, R: int) -> np.ndarray:
    """The background of a still camera with a margin for pans: float32 [R + 2m, R + 2m, 3]."""
    margin = math.ceil(_CACHE_MARGIN * R)
    cv = _Canvas(R + 2 * margin)
    zb, horizon_offset = _BACKGROUND_VIEW[camera]
    _draw_background(cv, scene, zb, scene.horizon + horizon_offset, 1.0, (0.0, 0.0), margin)
    cv.img.flags.writeable = False
    return cv.img


def _render(world: World, shot: ShotSpec, size: int, phase: float, jitter_zoom: float, pan_px: tuple[int, int],
            offsets: np.ndarray | None, camera_zoom: float = 1.0, camera_pan: float = 0.0) -> np.ndarray:
    """Draw one frame at internal resolution; returns float32 [R, R, 3].

    The view is the camera's move (`camera_zoom` about the centre, `camera_pan` across, both
    for the whole picture) plus jitter: a pan of whole internal pixels `pan_px` for everything
    and a slight zoom `jitter_zoom` of the figures only. The background comes from a per-process
    cache of each (scene, camera): a still camera (zoom 1, pan 0, keyframes and a clip's first
    frame) crops it, so the clip starts exactly on the keyframe; a moving one resamples it.
    """
    R = size * SUPERSAMPLE
    scene = palette_variant(world.scene(shot.scene_id), shot.palette)
    dx, dy = pan_px
    background = _cached_background(scene, shot.camera, R)
    margin = (background.shape[0] - R) // 2
    if camera_zoom == 1.0 and camera_pan == 0.0:
        # Panning the view right moves the picture right: crop further left in the cached canvas.
        cv = _Canvas(R, background[margin - dy:margin - dy + R, margin - dx:margin - dx + R])
    else:
        import cv2

        # Frame pixel centre X shows cached position (X - c) / zoom + margin, c = the view's offset;
        # cv2 indexes pixel centres at integers, hence the half-pixel terms.
        cx = (0.5 - 0.5 * camera_zoom + camera_pan) * R + dx
        cy = (0.5 - 0.5 * camera_zoom) * R + dy
        inverse = np.array([[1 / camera_zoom, 0, (0.5 - cx) / camera_zoom + margin - 0.5],
                            [0, 1 / camera_zoom, (0.5 - cy) / camera_zoom + margin - 0.5]], np.float64)
        warped = cv2.warpAffine(np.ascontiguousarray(background), inverse, (R, R),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        cv = _Canvas(R, warped)
    # Figures are lit by the time of day too, but less, so identities stay readable.
    cv.tint = np.sqrt(_TIME_TINT[scene.time_of_day])
    zoom = camera_zoom * jitter_zoom
    cv.set_map(zoom * R, (0.5 - 0.5 * zoom + camera_pan) * R + dx, (0.5 - 0.5 * zoom) * R + dy)
    # Draw the outer figures first so the centre one overlaps them in tight shots.
    order = sorted(range(len(shot.cast)), key=lambda i: shot.cast[i].position == "center")
    for i in order:
        m = shot.cast[i]
        x, feet, H = _figure_placement(world, shot, m)
        if offsets is not None:
            x += float(offsets[i, 0])
            feet += float(offsets[i, 1])
        pose = _pose(m.action, phase, walk_direction(m.position))
        _draw_figure(cv, world.character(m.character_id), x, feet, H, pose, m.expression, m.trousers)
    return cv.img


def _finish(img: np.ndarray, size: int, rng: np.random.Generator | None, brightness: float = 1.0) -> np.ndarray:
    """Area-downsample float [R, R, 3] to uint8 [size, size, 3], with brightness and faint noise."""
    f = img.shape[0] // size
    # Area average as a sum of f*f strided views: much faster than a reduce over a reshaped axis.
    out = sum(img[a::f, b::f] for a in range(f) for b in range(f)) * np.float32(1.0 / (f * f))
    out *= brightness
    if rng is not None:
        out += rng.normal(0.0, 1.5, out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")


def _shot_jitter(size: int, rng: np.random.Generator) -> tuple[float, tuple[int, int], np.ndarray, float]:
    """Small random changes so that two renders of one shot differ: figure zoom, view pan in whole
    internal pixels, figure offsets (frame units) [3, 2], brightness."""
    R = size * SUPERSAMPLE
    margin = math.ceil(_PAN_JITTER * R)
    zoom = 1.0 + float(rng.uniform(-0.02, 0.02))
    pan = (int(rng.integers(-margin, margin + 1)), int(rng.integers(-(margin // 2), margin // 2 + 1)))
    offsets = rng.uniform(-1, 1, (3, 2)) * np.array([0.015, 0.008])  # [3 members, (dx, dy)]
    brightness = float(rng.uniform(0.95, 1.05))
    return zoom, pan, offsets, brightness


def render_keyframe(world: World, shot: ShotSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """The shot's keyframe, uint8 [size, size, 3]; the same rng state gives identical pixels."""
    _check_size(size)
    zoom, pan, offsets, brightness = _shot_jitter(size, rng)
    return _finish(_render(world, shot, size, 0.0, zoom, pan, offsets), size, rng, brightness)


def render_keyframe_with_figures(world: World, shot: ShotSpec, size: int,
                                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The shot's keyframe (exactly ``render_keyframe``'s pixels for this rng state) and its figure mask.

    The mask, bool [size, size], marks the pixels the cast's figures change: the same shot is also
    rendered without its cast from a copy of the rng state, so jitter, noise and background are
    identical and the difference is the figures alone. Training can weight its loss there.
    """
    background_rng = copy.deepcopy(rng)
    frame = render_keyframe(world, shot, size, rng)
    if not shot.cast:
        return frame, np.zeros((size, size), bool)
    background = render_keyframe(world, dataclasses.replace(shot, cast=()), size, background_rng)
    return frame, _changed_pixels(frame, background)


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool [S, S]: where two renders of one rng state differ; 8/255 ignores only the faintest anti-aliased fringe."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > 8


def lookalike_shares(world: World, shot: ShotSpec, size: int, rng: np.random.Generator,
                     frame: np.ndarray | None = None) -> np.ndarray:
    """float32 [size, size]: the pixels that tell the shot's cast from their look-alikes, each pair an equal part of 1.

    Each cast member with single-attribute siblings in the world (``World.lookalikes``) is swapped
    for each of them in turn and the shot rendered again from ``rng``'s state, which must be the
    state ``frame`` (the keyframe, ``render_keyframe``'s pixels; rendered here when None) was
    rendered from; ``rng`` is not advanced. The pixels that change are what a viewer reads the
    difference from: an iris for an eye-colour pair, the skin for a skin pair, most of the figure
    (and where the taller one's head would be) for a height pair. Each swap that changes any pixel
    spreads an equal part of 1 evenly over its pixels (a pixel two swaps change gets both parts), so
    an iris keeps its pair's part beside a height pair's whole figure. All zeros when no member has
    a look-alike in view; otherwise the map sums to 1.
    """
    swaps = [(i, dataclasses.replace(member, character_id=twin_id))
             for i, member in enumerate(shot.cast) for twin_id in world.lookalikes(member.character_id)]
    return _swap_shares(world, shot, size, rng, frame, swaps)


def trousers_shares(world: World, shot: ShotSpec, size: int, rng: np.random.Generator,
                    frame: np.ndarray | None = None) -> np.ndarray:
    """float32 [size, size]: the pixels that show the cast's trousers (the episode's hidden state), each member an
    equal part of 1.

    Each cast member is rendered again in the next trouser colour from ``rng``'s state, which must be the state
    ``frame`` (``render_keyframe``'s pixels; rendered here when None) was rendered from; ``rng`` is not advanced.
    The pixels that change are that member's trousers in view (a wide shot's legs are a few pixels; a close-up
    shows none). All zeros when no trousers are in view; otherwise the map sums to 1, as ``lookalike_shares``'.
    """
    swaps = [(i, dataclasses.replace(member, trousers=(member.trousers + 1) % len(_TROUSERS)))
             for i, member in enumerate(shot.cast)]
    return _swap_shares(world, shot, size, rng, frame, swaps)


def _swap_shares(world: World, shot: ShotSpec, size: int, rng: np.random.Generator, frame: np.ndarray | None,
                 swaps: list) -> np.ndarray:
    """float32 [size, size]: for each (cast index, member) swap, the shot rendered again from ``rng``'s state with
    that member in that place; each swap that changes any pixel spreads an equal part of 1 evenly over its pixels."""
    shares = np.zeros((size, size), np.float32)
    if swaps and frame is None:
        frame = render_keyframe(world, shot, size, copy.deepcopy(rng))
    changed = []
    for i, member in swaps:
        cast = (*shot.cast[:i], member, *shot.cast[i + 1:])
        mask = _changed_pixels(frame, render_keyframe(world, dataclasses.replace(shot, cast=cast), size, copy.deepcopy(rng)))
        if mask.any():
            changed.append(mask)
    for mask in changed:
        shares += mask / (len(changed) * mask.sum(dtype=np.float32))
    return shares


def lookalike_mask(world: World, shot: ShotSpec, size: int, rng: np.random.Generator,
                   frame: np.ndarray | None = None) -> np.ndarray:
    """bool [size, size]: the pixels that tell the shot's cast from their look-alikes (``lookalike_shares``'s support)."""
    return lookalike_shares(world, shot, size, rng, frame) > 0


# Camera motion over a clip: (zoom at the end, horizontal pan at the end), from zoom 1, pan 0.
_CAMERA_MOTION = {"wide": (1.0, 0.05), "medium": (1.04, 0.0), "close-up": (1.1, 0.0)}


def render_clip(world: World, shot: ShotSpec, size: int, n_frames: int = 8,
                rng: np.random.Generator | None = None, count: int | None = None) -> np.ndarray:
    """A short clip uint8 [T, size, size, 3]: the action's motion and a slow camera move.

    With the same rng state as render_keyframe, frame 0 is the keyframe, pixel for pixel. Walkers translate, jumpers bounce, wavers move an arm,
    sitters lower onto a stool; wide shots pan slowly, medium and close-up shots zoom in. A motion spans the whole
    shot of ``n_frames`` frames (a walker crosses the same distance in a short shot as in a long one); ``count``
    renders only the shot's first ``count`` frames (T = count; default: all).
    """
    _check_size(size)
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    count = n_frames if count is None else count
    if not 1 <= count <= n_frames:
        raise ValueError(f"count must be in [1, n_frames], got {count}")
    rng = rng if rng is not None else np.random.default_rng(0)
    zoom, pan, offsets, brightness = _shot_jitter(size, rng)
    end_zoom, end_pan = _CAMERA_MOTION[shot.camera]
    frames = np.empty((count, size, size, 3), np.uint8)
    for t in range(count):
        phase = t / (n_frames - 1)
        img = _render(world, shot, size, phase, zoom, pan, offsets, camera_zoom=1.0 + (end_zoom - 1.0) * phase,
                      camera_pan=end_pan * phase)
        frames[t] = _finish(img, size, rng, brightness)
    return frames


def face_boxes(shot: ShotSpec, size: int, world: World | None = None,
               clip: bool = True) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Per cast member, in cast order: (character id, (x0, y0, x1, y1)) of its face in the keyframe.

    `world` defaults to `make_world(0)` (heights move the faces, so pass the shot's world).
    The box is the square that an aligned face photo covers (see render_face_photo): cropped and
    resized to 112x112 it puts the eyes where the photos have them. With `clip` (default) boxes are
    clipped to the frame and members whose face is entirely outside it are left out; without,
    every member's full square is returned (it may reach past the frame). Render jitter moves
    faces by at most about 2% of the frame. Exclusive ends: the crop is frame[y0:y1, x0:x1].
    """
    boxes = []
    for character_id, hx, hy, r in _heads(shot, world):
        cy = hy + _FACE_CROP_CY * r
        half = _FACE_CROP_HALF * r
        side = max(int(round(2 * half * size)), 1)
        x0, y0 = int(round((hx - half) * size)), int(round((cy - half) * size))
        x1, y1 = x0 + side, y0 + side
        if clip:
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
        boxes.append((character_id, (x0, y0, x1, y1)))
    return boxes


def head_mask(shot: ShotSpec, size: int, world: World | None = None, margin: float = 1.15) -> np.ndarray:
    """bool [size, size]: the cast's heads in the keyframe, discs of ``margin`` head radii.

    The head (skin, eyes, brows, mouth, hair cap) is where look-alikes that differ in eye colour or
    skin differ; a face box (``face_boxes``) also takes in the hair style and the collar, three
    times the area. Render jitter moves heads by at most about 2% of the frame, hence the margin.
    """
    centres = (np.arange(size) + 0.5) / size
    ys, xs = centres[:, None], centres[None, :]
    mask = np.zeros((size, size), bool)
    for _, hx, hy, r in _heads(shot, world):
        r = max(margin * r, 0.75 / size)  # a far head still covers the pixels next to its centre
        mask |= (xs - hx) ** 2 + (ys - hy) ** 2 <= r * r
    return mask


def _heads(shot: ShotSpec, world: World | None) -> list[tuple[str, float, float, float]]:
    """Per cast member: (character id, head centre x, y, head radius), in frame units, without render jitter."""
    if world is None:
        world = _default_world()
    heads = []
    for m in shot.cast:
        x, feet, H = _figure_placement(world, shot, m)
        pose = _pose(m.action, 0.0, walk_direction(m.position))
        hx, hy = _head_center(x + pose.dx, feet, H, pose.dy)
        heads.append((m.character_id, hx, hy, 0.17 * H))
    return heads


@functools.lru_cache(maxsize=1)
def _default_world() -> World:
    return make_world(0)


# --------------------------------------------------------------------------------------------
# Face photos (aligned like insightface's 112x112 crops: eyes at fixed positions)
# --------------------------------------------------------------------------------------------
# ArcFace's template puts the eyes at y = 51.6 in 112x112, centred horizontally. Our eyes sit at
# the head centre height; the head radius is chosen so that the whole hair style and the collar
# fit in the crop (hair style and outfit are part of the identity here), which makes the eyes
# a little closer together (24 px) than ArcFace's 35 px.
_FACE_EYE_Y = 51.6
_FACE_R = 32.0
_FACE_CROP_HALF = (FACE_SIZE / 2) / _FACE_R          # crop half-size in head radii
_FACE_CROP_CY = (FACE_SIZE / 2 - _FACE_EYE_Y) / _FACE_R  # crop centre below the eyes, in radii


def render_face_photo(world: World, character_id: str, rng: np.random.Generator,
                      size: int = FACE_SIZE) -> np.ndarray:
    """An aligned face photo uint8 [size, size, 3] with random light, small pose, scale and noise."""
    c = world.character(character_id)
    ss = 2
    R = size * ss
    bg_tone = rng.uniform(90, 200)
    background = np.clip(bg_tone + rng.uniform(-25, 25, 3), 0, 255)
    cv = _Canvas(R, background)
    # Pixel map such that the head radius is _FACE_R * size / 112 and the eyes sit at the template.
    H = 1.0
    r_px = _FACE_R * size / FACE_SIZE * ss
    scale = r_px / (0.17 * H)
    eye_x, eye_y = 0.5 * R, _FACE_EYE_Y * size / FACE_SIZE * ss
    # Head centre in drawing units is (0, -0.8) for feet at (0, 0).
    cv.set_map(scale, eye_x, eye_y + 0.8 * scale)
    expression = EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))]
    _draw_figure(cv, c, 0.0, 0.0, H, _Pose(), expression)
    # Pose and scale: a small similarity transform about the eye midpoint.
    angle = float(rng.uniform(-8, 8))
    zoom = float(rng.uniform(0.94, 1.06))
    shift = rng.uniform(-3, 3, 2) * ss
    image = Image.fromarray(np.clip(cv.img, 0, 255).astype(np.uint8))
    a = math.radians(angle)
    cos, sin = math.cos(a) / zoom, math.sin(a) / zoom
    cx, cy = eye_x, eye_y
    # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
    coeffs = (cos, sin, cx - cos * (cx + shift[0]) - sin * (cy + shift[1]),
              -sin, cos, cy + sin * (cx + shift[0]) - cos * (cy + shift[1]))
    image = image.transform((R, R), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                            fillcolor=tuple(int(v) for v in background))
    img = np.asarray(image, np.float32)
    # Lighting: a directional gradient, overall exposure and colour temperature.
    direction = rng.uniform(0, 2 * math.pi)
    grid = (np.arange(R, dtype=np.float32) + 0.5) / R - 0.5
    ramp = math.cos(direction) * grid[None, :] + math.sin(direction) * grid[:, None]  # [R, R]
    strength = rng.uniform(0.0, 0.5)
    light = (1.0 + strength * ramp)[..., None] * rng.uniform(0.85, 1.12) * rng.uniform(0.93, 1.07, 3)
    img = img * light.astype(np.float32)
    out = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    out += rng.normal(0.0, rng.uniform(2.0, 6.0), out.shape)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
