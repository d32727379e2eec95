"""A small, seeded, Market-1501-shaped dataset of drawn pedestrians, for tests and demos.

The real Market-1501 cannot be shipped with the project, but the whole pipeline (data layer,
training, feature extraction, evaluation) needs real JPEG files in the real layout to be run and
tested end to end. This module draws one:

- the three folders ``bounding_box_train/``, ``bounding_box_test/``, ``query/`` with official
  Market-1501 names ``PPPP_cCsS_FFFFFF_NN.jpg`` (``rmnet.data.market`` parses them like the real ones);
- train and test identities disjoint, pids drawn from 1..1501 like Market's (more if needed);
- 6 cameras; every identity is seen by 2..6 of them;
- each test identity has ``queries_per_id`` query images on distinct cameras and
  ``images_per_id`` gallery images spread over all its cameras, so every query has a true match
  on another camera;
- gallery junk (pid -1): badly placed boxes (a shifted or zoomed-in part of a test identity, or
  background only), and distractors (pid 0000): people who are no identity of the dataset, or
  background; as in Market, these exist only in the gallery.

The identity signal is learnable but not trivial. Each identity has a fixed appearance: skin and
hair colour, hair length, upper clothing colour(s) with one of six textures (plain, horizontal or
vertical stripes, checks, chest band, two-tone yoke) and sleeve length, lower clothing (trousers,
shorts or skirt, plain or patterned), shoe colour, a bag (none, backpack, shoulder bag) and a body
build. Every image adds nuisance: camera-dependent colour cast, contrast, brightness, blur and
JPEG quality, a per-camera scene behind random clutter, the view (front, back: no face, backpack
visible, side: narrower, one arm across), walking pose, box translation and scale, other people
partly in the box (sometimes in front), horizontal flip and sensor noise. A colour histogram
already matches far above chance; textures, the bag and the view-dependent parts need a learnt
model: tests/test_synthetic.py checks that hand-made descriptors (colour histograms, then a
metric learnt on the train identities) rank far above chance and below perfection. The default
size (48 train ids, 48 test ids, 1128 images) is meant for a training demo of a few minutes on
a CPU.

Everything comes from ``seed``: the same arguments give byte-identical files (for one OpenCV
build). The dataset is built in a temporary folder next to ``out`` and renamed into place; a
non-empty ``out`` is refused unless ``overwrite`` (``--force``). A ``synthetic.json`` in the root
records the arguments and the counts.

    python -m rmnet.data.synthetic --out data/synthetic --train-ids 48 --test-ids 48 --seed 0
    python -m rmnet.data.synthetic --out data/classes --classes --train-ids 20   # DIR/<class>/
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rmnet.atomic import atomic_dir, check_output, describe_os_error
from rmnet.data.market import SPLITS

VERSION = 1
MARKET_CAMERAS = 6


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; ``junk``/``distractors`` None: test_ids // 2 and test_ids."""
    train_ids: int = 48
    test_ids: int = 48
    images_per_id: int = 10      # train images per train id, gallery images per test id
    queries_per_id: int = 2      # query images per test id, on distinct cameras
    junk: int | None = None
    distractors: int | None = None
    cameras: int = MARKET_CAMERAS
    height: int = 128
    width: int = 64
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.train_ids >= 1, "train_ids must be >= 1"),
            (self.test_ids >= 1, "test_ids must be >= 1"),
            (2 <= self.cameras <= MARKET_CAMERAS,
             f"cameras must be in 2..{MARKET_CAMERAS} (Market-1501 names have cameras 1..6)"),
            (self.queries_per_id >= 1, "queries_per_id must be >= 1"),
            (self.queries_per_id <= self.cameras,
             "queries_per_id must be <= cameras (one query per camera)"),
            (self.images_per_id >= max(2, self.queries_per_id),
             "images_per_id must be >= 2 and >= queries_per_id (every identity is seen by at "
             "least two cameras, and every query camera by a gallery image)"),
            (self.junk is None or self.junk >= 0, "junk must be >= 0"),
            (self.distractors is None or self.distractors >= 0, "distractors must be >= 0"),
            (self.height >= 32 and self.width >= 16, "height must be >= 32 and width >= 16"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.train_ids + self.test_ids <= 9999, "at most 9999 identities (4-digit pids)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"synthetic dataset: {msg}")

    @property
    def n_junk(self) -> int:
        return self.test_ids // 2 if self.junk is None else self.junk

    @property
    def n_distractors(self) -> int:
        return self.test_ids if self.distractors is None else self.distractors


# --- appearance ---------------------------------------------------------------------------------

UPPER_TEXTURES = ("plain", "hstripes", "vstripes", "checks", "band", "yoke")
LOWER_TEXTURES = ("plain", "vstripes", "checks")
LOWER_KINDS = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder")


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """BGR 0..255 of an HSV colour (h in 0..180 as in OpenCV, s and v in 0..1)."""
    px = np.uint8([[[round(h) % 180, round(s * 255), round(v * 255)]]])
    return tuple(float(c) for c in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])


def _cloth_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """Clothing colours as on a street: many black/grey/white, the rest any hue."""
    r = rng.random()
    if r < 0.15:
        return _hsv(rng.uniform(0, 180), rng.uniform(0, 0.2), rng.uniform(0.08, 0.22))  # black
    if r < 0.25:
        return _hsv(rng.uniform(0, 180), rng.uniform(0, 0.12), rng.uniform(0.4, 0.65))  # grey
    if r < 0.33:
        return _hsv(rng.uniform(0, 180), rng.uniform(0, 0.1), rng.uniform(0.82, 0.95))  # white
    return _hsv(rng.uniform(0, 180), rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.9))


def _contrast_colour(rng: np.random.Generator, c: tuple[float, float, float]):
    """A second clothing colour visibly different from ``c``."""
    for _ in range(20):
        c2 = _cloth_colour(rng)
        if np.abs(np.subtract(c2, c)).sum() > 150:
            return c2
    return tuple(255.0 - x for x in c)


@dataclass(frozen=True)
class Appearance:
    """The fixed look of one identity (colours BGR 0..255)."""
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    long_hair: bool
    upper: tuple[float, float, float]
    upper2: tuple[float, float, float]
    upper_texture: str
    upper_period: float          # stripe/check period, fraction of body height
    short_sleeves: bool
    upper_length: float          # where the upper clothing ends, fraction of body height
    lower: tuple[float, float, float]
    lower2: tuple[float, float, float]
    lower_texture: str
    lower_kind: str
    shoes: tuple[float, float, float]
    bag: str
    bag_colour: tuple[float, float, float]
    build: float                 # width factor
    stature: float               # height factor


def random_appearance(rng: np.random.Generator) -> Appearance:
    skin = _hsv(rng.uniform(5, 18), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = [_hsv(rng.uniform(0, 180), 0.1, rng.uniform(0.05, 0.15)),   # black
            _hsv(rng.uniform(8, 16), rng.uniform(0.5, 0.8), rng.uniform(0.2, 0.45)),  # brown
            _hsv(rng.uniform(18, 26), rng.uniform(0.4, 0.7), rng.uniform(0.6, 0.85)),  # blond
            _hsv(0, 0, rng.uniform(0.55, 0.8))][rng.choice(4, p=[0.5, 0.25, 0.15, 0.1])]  # grey
    upper = _cloth_colour(rng)
    lower = _cloth_colour(rng)
    kind = LOWER_KINDS[rng.choice(3, p=[0.65, 0.2, 0.15])]
    return Appearance(
        skin=skin, hair=hair, long_hair=bool(rng.random() < 0.35),
        upper=upper, upper2=_contrast_colour(rng, upper),
        upper_texture=UPPER_TEXTURES[rng.choice(6, p=[0.35, 0.15, 0.12, 0.12, 0.14, 0.12])],
        upper_period=float(rng.uniform(0.035, 0.07)),
        short_sleeves=bool(rng.random() < 0.4),
        upper_length=float(rng.uniform(0.47, 0.58)),
        lower=lower, lower2=_contrast_colour(rng, lower),
        lower_texture=LOWER_TEXTURES[rng.choice(3, p=[0.7, 0.15, 0.15])],
        lower_kind=kind,
        shoes=_cloth_colour(rng),
        bag=BAGS[rng.choice(3, p=[0.5, 0.3, 0.2])],
        bag_colour=_cloth_colour(rng),
        build=float(rng.uniform(0.86, 1.14)),
        stature=float(rng.uniform(0.94, 1.04)),
    )


@dataclass(frozen=True)
class Camera:
    """What a camera does to every image it takes."""
    gain: tuple[float, float, float]   # per-channel colour cast (B, G, R)
    contrast: float
    brightness: float
    blur: float                         # Gaussian sigma in output pixels (0: none)
    quality: int                        # JPEG quality
    scene: tuple[float, float, float]   # background colour of its scene
    ground: tuple[float, float, float]
    horizon: float                      # where the ground starts, fraction of the image


def random_camera(rng: np.random.Generator) -> Camera:
    gain = rng.uniform(0.85, 1.15, 3)
    gain = gain / gain.mean()
    return Camera(gain=tuple(float(g) for g in gain), contrast=float(rng.uniform(0.8, 1.15)),
                  brightness=float(rng.uniform(-20, 20)), blur=float(rng.uniform(0, 0.9)),
                  quality=int(rng.integers(75, 96)),
                  scene=_hsv(rng.uniform(0, 180), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.8)),
                  ground=_hsv(rng.uniform(0, 180), rng.uniform(0, 0.25), rng.uniform(0.25, 0.6)),
                  horizon=float(rng.uniform(0.55, 0.8)))


# --- drawing --------------------------------------------------------------------------------

SS = 2   # supersampling factor: draw at 2x and shrink with INTER_AREA (anti-aliased edges)


def _second_colour(texture: str, period: float, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Where a clothing texture shows its second colour: bool (h, w) from body coordinates
    px (1, w) and py (h, 1) (fractions of body height from the neck-line centre and the top)."""
    shape = (py.shape[0], px.shape[1])
    if texture == "plain":
        sel = np.zeros((1, 1), bool)
    elif texture == "hstripes":
        sel = np.floor(py / period) % 2 == 1
    elif texture == "vstripes":
        sel = np.floor(px / period) % 2 == 1
    elif texture == "checks":
        sel = (np.floor(py / period) + np.floor(px / period)) % 2 == 1
    elif texture == "band":
        sel = (py > 0.26) & (py < 0.34)
    elif texture == "yoke":
        sel = py < 0.24
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.broadcast_to(sel, shape)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


# labels of the body parts in the map _draw_person paints (0: not the person)
HAIR, SKIN, UPPER, UPPER2, LOWER, LOWER2, SHOES, BAG = range(1, 9)


def _draw_person(img: np.ndarray, app: Appearance, cx: float, y0: float, ph: float, view: str,
                 stride: float, swing: float) -> None:
    """Draw a pedestrian into ``img`` (float32 BGR, supersampled): feet near y0 + 0.97 ph.

    The parts are painted back to front as labels into a map; textures then split the
    clothing labels into their two colours, and the map is coloured into ``img`` in one go."""
    h, w = img.shape[:2]
    py = ((np.arange(h, dtype=np.float32) - y0) / ph)[:, None]
    px = ((np.arange(w, dtype=np.float32) - cx) / ph)[None, :]
    bw = app.build * (0.72 if view == "side" else 1.0)
    t = max(2, int(round(0.02 * ph)))
    lab = np.zeros((h, w), np.uint8)

    X = lambda f: cx + f * ph   # noqa: E731
    Y = lambda f: y0 + f * ph   # noqa: E731
    P = lambda fx, fy: _pt(X(fx), Y(fy))   # noqa: E731
    ul = app.upper_length

    # long hair behind the head and shoulders
    if app.long_hair:
        cv2.rectangle(lab, P(-0.062, 0.06), P(0.062, 0.18 if view == "front" else 0.22), HAIR, -1)
    # a backpack seen from the side sits behind the arm
    if app.bag == "backpack" and view == "side":
        cv2.rectangle(lab, P(-0.09 * bw - 0.09, 0.17), P(-0.09 * bw, 0.42), BAG, -1)
    # legs: trousers, or skin below shorts or a skirt; shoes
    hip = 0.055 * bw
    leg_t = max(2, int(round(0.08 * ph * app.build)))
    if app.lower_kind == "trousers":
        for s in (-1, 1):
            cv2.line(lab, P(s * hip, ul - 0.02), P(s * (hip + stride), 0.93), LOWER, leg_t)
    else:
        knee = 0.7 if app.lower_kind == "shorts" else 0.72
        for s in (-1, 1):
            cv2.line(lab, P(s * hip, ul - 0.02), P(s * (hip + stride), 0.93), SKIN, leg_t)
        lab[(lab == SKIN) & (py <= knee)] = LOWER
        if app.lower_kind == "skirt":
            cv2.fillPoly(lab, [np.int32([P(-0.12 * bw, ul - 0.02), P(0.12 * bw, ul - 0.02),
                                         P(0.17 * bw, 0.72), P(-0.17 * bw, 0.72)])], LOWER)
    for s in (-1, 1):
        cv2.ellipse(lab, P(s * (hip + stride) + 0.015 * s, 0.955), _pt(0.045 * ph, 0.022 * ph),
                    0, 0, 360, SHOES, -1)
    # torso, neck
    cv2.fillPoly(lab, [np.int32([P(-0.13 * bw, 0.15), P(0.13 * bw, 0.15), P(0.115 * bw, ul),
                                 P(-0.115 * bw, ul)])], UPPER)
    cv2.rectangle(lab, P(-0.025, 0.12), P(0.025, 0.16), SKIN, -1)
    # bags
    if app.bag == "backpack" and view == "back":
        cv2.rectangle(lab, P(-0.09 * bw, 0.18), P(0.09 * bw, 0.44), BAG, -1)
    elif app.bag == "backpack" and view == "front":
        for s in (-1, 1):   # the straps
            cv2.line(lab, P(s * 0.075 * bw, 0.155), P(s * 0.085 * bw, 0.4), BAG, t)
    elif app.bag == "shoulder":
        cv2.line(lab, P(-0.1 * bw, 0.16), P(0.12 * bw, 0.5), BAG, t)
        cv2.rectangle(lab, P(0.1 * bw, 0.46), P(0.1 * bw + 0.1, 0.58), BAG, -1)
    # arms: shoulder to hand; in side view one arm swings in front of the body
    arm_t = max(2, int(round(0.06 * ph * app.build)))
    for s in ((1,) if view == "side" else (-1, 1)):
        sx = 0.02 if view == "side" else s * 0.135 * bw
        hx = swing if view == "side" else s * (0.15 * bw + abs(swing) * 0.3)
        sh, hand = (X(sx), Y(0.17)), (X(hx), Y(0.47))
        cv2.line(lab, _pt(*sh), _pt(*hand), SKIN if app.short_sleeves else UPPER, arm_t)
        if app.short_sleeves:
            elbow = ((sh[0] + hand[0]) / 2, (sh[1] + hand[1]) / 2)
            cv2.line(lab, _pt(*sh), _pt(*elbow), UPPER, arm_t)
        cv2.circle(lab, _pt(*hand), max(1, arm_t // 2 + 1), SKIN, -1)
    # head: a face (none from behind), hair on top
    head_c, head_ax = P(0.0, 0.075), _pt(0.05 * ph, 0.065 * ph)
    cv2.ellipse(lab, head_c, head_ax, 0, 0, 360, HAIR if view == "back" else SKIN, -1)
    cap = np.zeros_like(lab)
    cv2.ellipse(cap, head_c, head_ax, 0, 0, 360, 1, -1)
    lab[(cap > 0) & (py < 0.06)] = HAIR

    # textures: the second colour where the pattern says so
    if app.upper_texture != "plain":
        lab[(lab == UPPER) & _second_colour(app.upper_texture, app.upper_period, px, py)] = UPPER2
    if app.lower_texture != "plain":
        lab[(lab == LOWER) & _second_colour(app.lower_texture, 0.05, px, py)] = LOWER2
    palette = np.float32([(0, 0, 0), app.hair, app.skin, app.upper, app.upper2, app.lower,
                          app.lower2, app.shoes, app.bag_colour])
    cv2.copyTo(np.take(palette, lab, axis=0), (lab > 0).view(np.uint8), img)   # in place


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, n: int) -> None:
    h, w = img.shape[:2]
    for _ in range(n):
        colour = tuple(float(c) for c in rng.uniform(20, 235, 3))
        kind = rng.integers(3)
        x, y = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 8, h))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(3, w // 2)),
                                        y + int(rng.integers(3, h // 2))), colour, -1)
        elif kind == 1:
            cv2.ellipse(img, (x, y), (int(rng.integers(2, w // 4)), int(rng.integers(2, h // 6))),
                        0, 0, 360, colour, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour,
                     int(rng.integers(1, 4 * SS)))


def draw_person(app: Appearance | None, cam: Camera, rng: np.random.Generator, height: int,
                width: int, mode: str = "person") -> np.ndarray:
    """One uint8 BGR (height, width, 3) crop of ``app`` seen by ``cam``.

    ``mode``: "person" (a well-placed box), "partial" (junk: a box shifted or zoomed onto part
    of the person), "background" (no person; ``app`` may be None).
    """
    if app is None and mode != "background":
        raise ValueError(f"render: mode {mode!r} needs an appearance")
    h, w = height * SS, width * SS
    img = np.empty((h, w, 3), np.float32)
    # the camera's scene: a wall/ground split at a per-camera height, shifted per box, and a
    # per-box mix of the camera's colours with others (people walk past different shops)
    horizon = int(round((cam.horizon + rng.uniform(-0.1, 0.1)) * h))
    for rows, base in ((slice(0, horizon), cam.scene), (slice(horizon, h), cam.ground)):
        a = rng.uniform(0.3, 0.8)
        img[rows] = tuple(a * b + (1 - a) * c for b, c in zip(base, rng.uniform(30, 220, 3)))
    _draw_clutter(img, rng, int(rng.integers(3, 10)))

    def person(a: Appearance, cx: float, y0: float, ph: float) -> None:
        view = ("front", "back", "side")[rng.choice(3, p=[0.4, 0.4, 0.2])]
        _draw_person(img, a, cx, y0, ph, view, stride=float(rng.uniform(0, 0.06)),
                     swing=float(rng.uniform(-0.12, 0.12)))

    if mode == "person":
        ph = h * rng.uniform(0.76, 0.94) * app.stature
        cx = w / 2 + rng.uniform(-0.12, 0.12) * w
        y0 = (h - ph) / 2 + rng.uniform(-0.05, 0.05) * h
        front = None
        if rng.random() < 0.2:   # somebody else partly in the box
            other = random_appearance(rng)
            side = 1 if rng.random() < 0.5 else -1
            args = (other, w / 2 + side * rng.uniform(0.55, 0.8) * w,
                    y0 + rng.uniform(-0.05, 0.1) * h, ph * rng.uniform(0.9, 1.1))
            if rng.random() < 0.3:
                front = args
            else:
                person(*args)
        person(app, cx, y0, ph)
        if front is not None:
            person(*front)
    elif mode == "partial":
        if rng.random() < 0.5:   # shifted off the box
            ph = h * rng.uniform(0.8, 0.95)
            cx = w / 2 + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.45, 0.7) * w
            person(app, cx, (h - ph) / 2 + rng.uniform(-0.3, 0.3) * h, ph)
        else:                    # zoomed onto the head and chest or onto the legs
            ph = h * rng.uniform(1.8, 2.6)
            top = rng.random() < 0.5
            y0 = rng.uniform(-0.02, 0.05) * h if top else h - ph * rng.uniform(0.95, 1.0)
            person(app, w / 2 + rng.uniform(-0.1, 0.1) * w, y0, ph)
    elif mode != "background":
        raise ValueError(f"unknown mode {mode!r}")

    # the camera: colour cast, contrast and brightness (with a little per-box variation)
    gain = np.float32(cam.gain) * np.float32(rng.uniform(0.95, 1.05, 3))
    light = cam.contrast * rng.uniform(0.9, 1.1)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    img = (img - 128.0) * np.float32(light) + np.float32(128.0 + cam.brightness)
    img *= gain
    if cam.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 6))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


# --- the dataset plan ------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One file to write: split folder, file name, what to draw and the seed to draw it with."""
    split: str
    name: str
    pid: int            # -1 junk, 0 distractor
    camid: int
    appearance: int     # index into DatasetPlan.appearances, or -1 for none
    mode: str
    seed: int


@dataclass
class DatasetPlan:
    cfg: SyntheticConfig
    appearances: list[Appearance]
    cameras: list[Camera]
    train_pids: list[int]
    test_pids: list[int]
    items: list[Item] = field(default_factory=list)


def _spread(rng: np.random.Generator, cams: list[int], n: int) -> list[int]:
    """n camera ids covering every camera of ``cams`` (needs n >= len(cams)), shuffled."""
    out = [cams[i % len(cams)] for i in range(n)]
    return [out[i] for i in rng.permutation(n)]


def make_plan(cfg: SyntheticConfig) -> DatasetPlan:
    """Decide every file (deterministic in ``cfg``), without drawing any pixels."""
    rng = np.random.default_rng([cfg.seed, VERSION])
    n_ids = cfg.train_ids + cfg.test_ids
    pool = max(1501, 2 * n_ids)
    pids = sorted(int(p) + 1 for p in rng.choice(min(pool, 9999), n_ids, replace=False))
    order = rng.permutation(n_ids)
    train_pids = sorted(pids[i] for i in order[:cfg.train_ids])
    test_pids = sorted(pids[i] for i in order[cfg.train_ids:])
    cameras = [random_camera(rng) for _ in range(cfg.cameras)]
    appearances = [random_appearance(rng) for _ in range(n_ids)]
    app_of = {pid: i for i, pid in enumerate(train_pids + test_pids)}
    plan = DatasetPlan(cfg, appearances, cameras, train_pids, test_pids)
    used: dict[str, set[str]] = {s: set() for s in SPLITS}

    def add(split: str, pid: int, cam: int, app: int, mode: str) -> None:
        while True:
            seq = int(rng.integers(1, 7))
            frame = int(rng.integers(1, 1_000_000))
            box = int(rng.integers(1, 10))
            name = f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"
            if name not in used[split]:
                break
        used[split].add(name)
        plan.items.append(Item(split, name, pid, cam, app, mode, int(rng.integers(2**63))))

    def id_cameras(n_min: int) -> list[int]:
        hi = min(cfg.cameras, cfg.images_per_id)
        k = int(rng.integers(max(2, n_min), hi + 1))
        return sorted(int(c) + 1 for c in rng.choice(cfg.cameras, k, replace=False))

    for pid in train_pids:
        for cam in _spread(rng, id_cameras(2), cfg.images_per_id):
            add("train", pid, cam, app_of[pid], "person")
    for pid in test_pids:
        cams = id_cameras(cfg.queries_per_id)
        for cam in _spread(rng, cams, cfg.images_per_id):
            add("gallery", pid, cam, app_of[pid], "person")
        for cam in [cams[i] for i in rng.permutation(len(cams))[:cfg.queries_per_id]]:
            add("query", pid, cam, app_of[pid], "person")
    for _ in range(cfg.n_junk):
        cam = int(rng.integers(1, cfg.cameras + 1))
        if rng.random() < 0.75:
            add("gallery", -1, cam, app_of[test_pids[rng.integers(len(test_pids))]], "partial")
        else:
            add("gallery", -1, cam, -1, "background")
    for _ in range(cfg.n_distractors):
        cam = int(rng.integers(1, cfg.cameras + 1))
        if rng.random() < 0.7:   # a passer-by who is no identity of the dataset
            plan.appearances.append(random_appearance(rng))
            add("gallery", 0, cam, len(plan.appearances) - 1, "person")
        else:
            add("gallery", 0, cam, -1, "background")
    return plan


def render_item(plan: DatasetPlan, item: Item) -> np.ndarray:
    cfg = plan.cfg
    app = plan.appearances[item.appearance] if item.appearance >= 0 else None
    return draw_person(app, plan.cameras[item.camid - 1], np.random.default_rng(item.seed),
                  cfg.height, cfg.width, item.mode)


def encode_item(plan: DatasetPlan, item: Item) -> bytes:
    quality = plan.cameras[item.camid - 1].quality
    ok, buf = cv2.imencode(".jpg", render_item(plan, item), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {item.name}")
    return buf.tobytes()


@dataclass(frozen=True)
class Summary:
    out: Path
    counts: dict[str, int]
    train_ids: int
    test_ids: int
    junk: int
    distractors: int
    seconds: float

    def __str__(self) -> str:
        c = self.counts
        return (f"wrote {self.out}: {SPLITS['train']}/ {c['train']} images of {self.train_ids} "
                f"ids; {SPLITS['query']}/ {c['query']} images; {SPLITS['gallery']}/ "
                f"{c['gallery']} images ({self.test_ids} ids, {self.junk} junk -1, "
                f"{self.distractors} distractors 0000); {self.seconds:.1f} s")


def generate(out: str | Path, cfg: SyntheticConfig = SyntheticConfig(),
             overwrite: bool = False) -> Summary:
    """Write the dataset of ``cfg`` to ``out`` (atomically; see the module doc)."""
    t0 = time.perf_counter()
    out = Path(out)
    plan = make_plan(cfg)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for folder in SPLITS.values():
            (tmp / folder).mkdir()
        for item in plan.items:
            (tmp / SPLITS[item.split] / item.name).write_bytes(encode_item(plan, item))
        counts = {s: sum(it.split == s for it in plan.items) for s in SPLITS}
        meta = {"generator": "rmnet.data.synthetic", "version": VERSION, "config": asdict(cfg),
                "counts": counts, "train_pids": plan.train_pids, "test_pids": plan.test_pids}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Summary(out, counts, cfg.train_ids, cfg.test_ids, cfg.n_junk, cfg.n_distractors,
                   time.perf_counter() - t0)


def generate_classes(out: str | Path, cfg: SyntheticConfig = SyntheticConfig(),
                     overwrite: bool = False) -> Summary:
    """An image-classification folder for backbone pre-training (``rmnet.data.classes``):
    ``out/<pid>/<name>.jpg``, one class per train identity of ``cfg`` with its
    ``images_per_id`` images (the test split is not drawn). Written atomically."""
    t0 = time.perf_counter()
    out = Path(out)
    plan = make_plan(cfg)
    items = [it for it in plan.items if it.split == "train"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for pid in plan.train_pids:
            (tmp / f"{pid:04d}").mkdir()
        for item in items:
            (tmp / f"{item.pid:04d}" / item.name).write_bytes(encode_item(plan, item))
        meta = {"generator": "rmnet.data.synthetic", "version": VERSION, "layout": "classes",
                "config": asdict(cfg), "classes": len(plan.train_pids), "images": len(items)}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Summary(out, {"train": len(items), "query": 0, "gallery": 0}, cfg.train_ids, 0, 0,
                   0, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    ap = argparse.ArgumentParser(
        prog="python -m rmnet.data.synthetic",
        description="Write a small seeded Market-1501-shaped dataset of drawn pedestrians.")
    ap.add_argument("--out", type=Path, required=True, help="dataset root to create")
    ap.add_argument("--train-ids", type=int, default=d.train_ids)
    ap.add_argument("--test-ids", type=int, default=d.test_ids)
    ap.add_argument("--images-per-id", type=int, default=d.images_per_id,
                    help="train images per train id and gallery images per test id")
    ap.add_argument("--queries-per-id", type=int, default=d.queries_per_id)
    ap.add_argument("--junk", type=int, default=None, help="pid -1 gallery images "
                    "(default: test ids / 2)")
    ap.add_argument("--distractors", type=int, default=None, help="pid 0000 gallery images "
                    "(default: test ids)")
    ap.add_argument("--cameras", type=int, default=d.cameras)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ap.add_argument("--classes", action="store_true",
                    help="write an image-classification folder instead (OUT/<class>/*.jpg, "
                         "one class per train id), for tools/train.py --pretrain")
    a = ap.parse_args(argv)
    try:
        cfg = SyntheticConfig(train_ids=a.train_ids, test_ids=a.test_ids,
                              images_per_id=a.images_per_id, queries_per_id=a.queries_per_id,
                              junk=a.junk, distractors=a.distractors, cameras=a.cameras,
                              height=a.height, width=a.width, seed=a.seed)
        check_output(a.out, "--out", folder=True)
        if a.classes:
            summary = generate_classes(a.out, cfg, overwrite=a.force)
            print(f"wrote {summary.out}: {summary.train_ids} class folders, "
                  f"{summary.counts['train']} images; {summary.seconds:.1f} s")
            return 0
        summary = generate(a.out, cfg, overwrite=a.force)
    except (ValueError, FileExistsError) as e:      # OutputError is a ValueError
        print(f"rmnet.data.synthetic: {e}", file=sys.stderr)
        return 2
    except OSError as e:                             # e.g. the disk filled up while writing
        print(f"rmnet.data.synthetic: {describe_os_error(e)}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
