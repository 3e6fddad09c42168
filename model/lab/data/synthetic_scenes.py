"""Synthetic audio-visual scenes in which only the sound says which object is the answer.

Each clip shows 2-4 moving shapes of distinct categories. The category is the shape; colour, size,
position, rotation and motion are random, so appearance alone cannot tell which object sounds. Each
category has its own sound signature (tone, chirp, noise band, ...). Time is cut into segments of
0.96 s, the length of one VGGish window, and in each segment:

    s4    exactly one object sounds                     (binary masks)
    ms3   one or more objects sound together            (binary masks: the union)
    avss  one or more objects sound, labelled by class  (class-id masks, 0 = background)

Segments are 0.96 s rather than AVSBench's 1 s so that every video frame's audio window (the model's
alignment rule: window floor(t / 0.96)) holds exactly the sound of that frame's ground truth; with 1 s
seconds the two drift apart by 40 ms a second.

Everything is a pure function of (subset, seed, index): the same seed gives the same bytes.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from model.modeling.audio_frontend import SAMPLE_RATE

SEGMENT_S = 0.96  # one VGGish window
# Chosen to stay distinct after downscaling and rotation: a diamond is a rotated square and a hexagon a
# circle at 15 pixels, which made a first version of this set needlessly hard to learn.
CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "bar", "crescent", "ring")
CLASS_NAMES: tuple[str, ...] = ("background", *CATEGORIES)  # AVSS-style: class id = category index + 1
SEGMENTS = {"s4": 5, "ms3": 5, "avss": 10}  # AVSBench: 5 frames per S4/MS3 clip, 10 per AVSS clip


@dataclass(frozen=True)
class SceneObject:
    category: int  # index into CATEGORIES
    colour: tuple[int, int, int]
    radius: float  # pixels at the reference size 224
    start: tuple[float, float]  # centre at t=0, as fractions of width/height
    velocity: tuple[float, float]  # fractions of the frame per second (bounces off the borders)
    angle: float  # initial rotation, radians
    spin: float  # radians per second
    pitch: float  # multiplies the category's base frequencies (a little variety within a class)
    loudness: float


@dataclass(frozen=True)
class Scene:
    subset: str
    name: str
    objects: tuple[SceneObject, ...]  # in drawing order (later ones occlude earlier ones)
    sounding: tuple[tuple[int, ...], ...]  # per segment: indices into `objects` that make sound
    background: tuple[int, int, int]
    noise_seed: int

    @property
    def num_segments(self) -> int:
        return len(self.sounding)

    @property
    def duration_s(self) -> float:
        return self.num_segments * SEGMENT_S


def make_scene(subset: str, seed: int, index: int) -> Scene:
    """The `index`-th clip of a synthetic dataset with `seed` (deterministic)."""
    if subset not in SEGMENTS:
        raise ValueError(f"subset must be one of {sorted(SEGMENTS)}, got {subset!r}")
    rng = np.random.default_rng([seed, index, sorted(SEGMENTS).index(subset)])
    count = int(rng.integers(2, 4 if subset == "s4" else 5))  # s4: 2-3 objects, ms3/avss: 2-4
    categories = rng.choice(len(CATEGORIES), size=count, replace=False)
    objects = []
    for category in categories:
        hue, sat, val = rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)
        colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
        speed, heading = rng.uniform(0.0, 0.25), rng.uniform(0, 2 * math.pi)
        objects.append(SceneObject(
            category=int(category), colour=colour, radius=float(rng.uniform(22, 40)),  # type: ignore[arg-type]
            start=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
            velocity=(speed * math.cos(heading), speed * math.sin(heading)),
            angle=float(rng.uniform(0, 2 * math.pi)), spin=float(rng.uniform(-1.5, 1.5)),
            pitch=float(rng.uniform(0.94, 1.06)), loudness=float(rng.uniform(0.25, 0.45)),
        ))
    sounding = []
    for _ in range(SEGMENTS[subset]):
        if subset == "s4":
            sounding.append((int(rng.integers(count)),))
        else:
            k = int(rng.integers(1, count + 1))
            sounding.append(tuple(sorted(int(i) for i in rng.choice(count, size=k, replace=False))))
    background = tuple(int(c) for c in rng.integers(20, 110, size=3))
    return Scene(subset=subset, name=f"syn_{subset}_{seed}_{index:05d}", objects=tuple(objects),
                 sounding=tuple(sounding), background=background, noise_seed=int(rng.integers(2**31)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- video
def _position(obj: SceneObject, t: float) -> tuple[float, float]:
    """Centre at time t as fractions of the frame, bouncing off the borders (a triangle wave)."""
    out = []
    for p0, v in zip(obj.start, obj.velocity, strict=True):
        p = (p0 + v * t) % 2.0
        out.append(2.0 - p if p > 1.0 else p)
    return out[0], out[1]


def _outline(category: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape, or None for the round ones (drawn as ellipses)."""
    name = CATEGORIES[category]

    def ring_of(n: int, radii: list[float], offset: float = 0.0) -> list[tuple[float, float]]:
        pts = []
        for k in range(n):
            a = angle + offset + 2 * math.pi * k / n
            rad = radii[k % len(radii)]
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if name == "square":
        return ring_of(4, [r], math.pi / 4)
    if name == "triangle":
        return ring_of(3, [r], -math.pi / 2)
    if name == "star":
        return ring_of(10, [r, 0.45 * r], -math.pi / 2)
    if name == "bar":  # a long thin rectangle, 3.5 : 1
        c, s = math.cos(angle), math.sin(angle)
        corners = [(r, 0.28 * r), (-r, 0.28 * r), (-r, -0.28 * r), (r, -0.28 * r)]
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]
    if name == "crescent":
        return _crescent(cx, cy, r, angle)
    if name == "cross":
        w = 0.33 * r
        arm = [(w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
               (-w, -r), (w, -r)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    return None  # circle, ring


def _crescent(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """A disc of radius r with a bite: the part outside a disc of radius 0.8 r centred 0.5 r towards `angle`."""
    d, r_in = 0.5 * r, 0.8 * r
    alpha = math.acos((r * r + d * d - r_in * r_in) / (2 * r * d))  # outer-circle angle of the two tips
    beta = math.acos((r_in * r_in + d * d - r * r) / (2 * r_in * d))  # inner-circle angle of the two tips
    ix, iy = cx + d * math.cos(angle), cy + d * math.sin(angle)
    outer = [(cx + r * math.cos(a), cy + r * math.sin(a))
             for a in np.linspace(angle + alpha, angle + 2 * math.pi - alpha, 40)]
    # the inner arc runs back from the last outer tip to the first, through the part facing the centre
    inner = [(ix + r_in * math.cos(a), iy + r_in * math.sin(a))
             for a in np.linspace(angle + math.pi + beta, angle + math.pi - beta, 24)]
    return outer + inner


def render_frame(scene: Scene, t: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The frame at time t and its per-pixel object map.

    Returns:
        (RGB uint8 [H, W, 3], object ids uint8 [H, W] where 0 = background and k = objects[k - 1]).
    """
    W, H = size
    scale = min(W, H) / 224.0
    image = Image.new("RGB", (W, H), scene.background)
    ids = Image.new("L", (W, H), 0)
    draw, draw_ids = ImageDraw.Draw(image), ImageDraw.Draw(ids)
    for k, obj in enumerate(scene.objects, start=1):
        fx, fy = _position(obj, t)
        r = obj.radius * scale
        cx, cy = r + fx * (W - 2 * r), r + fy * (H - 2 * r)  # keep the whole shape inside the frame
        angle = obj.angle + obj.spin * t
        polygon = _outline(obj.category, cx, cy, r, angle)
        box = (cx - r, cy - r, cx + r, cy + r)
        if polygon is not None:
            draw.polygon(polygon, fill=obj.colour)
            draw_ids.polygon(polygon, fill=k)
        elif CATEGORIES[obj.category] == "ring":
            width = max(2, round(0.35 * r))
            draw.ellipse(box, outline=obj.colour, width=width)
            draw_ids.ellipse(box, outline=k, width=width)
        else:
            draw.ellipse(box, fill=obj.colour)
            draw_ids.ellipse(box, fill=k)
    frame = np.asarray(image, dtype=np.int16)
    # mild sensor noise, deterministic per frame, so flat colours are not a shortcut
    noise = np.random.default_rng([scene.noise_seed, round(t * 1000)]).normal(0, 6, frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8), np.asarray(ids, dtype=np.uint8)


def segment_at(scene: Scene, t: float) -> int:
    return min(int(t / SEGMENT_S + 1e-9), scene.num_segments - 1)


def ground_truth(scene: Scene, ids: np.ndarray, t: float) -> np.ndarray:
    """Object-id map -> the answer at time t: 0/1 (s4, ms3) or class ids (avss), uint8 [H, W]."""
    sounding = scene.sounding[segment_at(scene, t)]
    if scene.subset == "avss":
        lut = np.zeros(len(scene.objects) + 1, dtype=np.uint8)
        for k in sounding:
            lut[k + 1] = scene.objects[k].category + 1
        return lut[ids]
    lut = np.zeros(len(scene.objects) + 1, dtype=np.uint8)
    lut[[k + 1 for k in sounding]] = 1
    return lut[ids]


# --------------------------------------------------------------------------------------------- audio
def _signature(category: int, t: np.ndarray, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One category's sound over times t (seconds), peak ~1."""
    name = CATEGORIES[category]
    two_pi = 2 * math.pi
    if name == "circle":  # pure tone
        return np.sin(two_pi * 440 * pitch * t)
    if name == "square":  # square wave (odd harmonics, band-limited to 7 terms)
        f = 220 * pitch
        return sum(np.sin(two_pi * (2 * k + 1) * f * t) / (2 * k + 1) for k in range(7)) * (4 / math.pi) * 0.8
    if name == "triangle":  # rising chirp, 4 per second
        phase = (t * 4) % 1.0
        return np.sin(two_pi * (300 * pitch * phase + 450 * pitch * phase**2) / 4)
    if name == "star":  # noise bursts in a high band, 5 per second
        noise = rng.normal(0, 1, t.shape)
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(t.size, 1 / SAMPLE_RATE)
        spectrum[(freqs < 2500 * pitch) | (freqs > 4500 * pitch)] = 0
        band = np.fft.irfft(spectrum, n=t.size)
        gate = ((t * 5) % 1.0) < 0.5
        return band / (np.abs(band).max() + 1e-9) * gate
    if name == "cross":  # two-tone chord
        return 0.5 * (np.sin(two_pi * 660 * pitch * t) + np.sin(two_pi * 990 * pitch * t))
    if name == "bar":  # amplitude-modulated high tone (8 Hz tremolo)
        return np.sin(two_pi * 1500 * pitch * t) * (0.5 + 0.5 * np.sin(two_pi * 8 * t))
    if name == "crescent":  # low sawtooth
        return 2 * ((110 * pitch * t) % 1.0) - 1
    # ring: falling chirp, 3 per second
    phase = (t * 3) % 1.0
    return np.sin(two_pi * (2000 * pitch * phase - 750 * pitch * phase**2) / 3)


def render_audio(scene: Scene) -> np.ndarray:
    """The clip's sound: float32 [duration * SAMPLE_RATE] in [-1, 1]; segment i holds its sounding objects' mix."""
    n = round(scene.duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(scene.noise_seed)
    audio = rng.normal(0, 0.01, n)  # a little room noise, so silence is not digital zero
    per_object = [obj.loudness * _signature(obj.category, t, obj.pitch, rng) for obj in scene.objects]
    seg_len = round(SEGMENT_S * SAMPLE_RATE)
    ramp = np.minimum(1.0, np.minimum(np.arange(seg_len), np.arange(seg_len)[::-1]) / 80)  # 5 ms fades: no clicks
    for i, sounding in enumerate(scene.sounding):
        lo, hi = i * seg_len, min((i + 1) * seg_len, n)
        for k in sounding:
            audio[lo:hi] += per_object[k][lo:hi] * ramp[: hi - lo]
    peak = np.abs(audio).max()
    if peak > 0.95:  # several loud sources at once: scale the clip down rather than clip it
        audio *= 0.95 / peak
    return audio.astype(np.float32)
