"""A small deterministic dataset of SYNTHETIC lesion-like images.

It lets a fresh machine (or a cluster with no data yet) run the whole pipeline with
no download. Images are drawn from their URI alone
(``synthetic://<seed>/<size>/<class>/<index>.png``), so any step on any machine reads
the same pixels without files being copied around. The classes differ in colour,
shape, border and texture, enough for a small CNN to learn them clearly. Nothing
here is medical data: every report marks it as synthetic.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCHEME = "synthetic://"
CLASSES = ("melanoma", "nevus", "basal_cell_carcinoma", "benign_keratosis")
_URI = re.compile(r"^synthetic://(\d+)/(\d+)/([a-z_]+)/(\d+)\.png$")


def uris(images_per_class: int, size: int, seed: int) -> list[str]:
    return [f"{SCHEME}{seed}/{size}/{cls}/{i:05d}.png" for cls in CLASSES for i in range(images_per_class)]


def render_uri(uri: str) -> bytes:
    """PNG bytes of the image a synthetic URI names."""
    match = _URI.match(uri)
    if not match or match.group(3) not in CLASSES:
        raise FileNotFoundError(f"not a synthetic image URI: {uri}")
    seed, size, cls, index = int(match.group(1)), int(match.group(2)), match.group(3), int(match.group(4))
    img = render(cls, index, size, seed)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, irregularity: float, points: int = 40):
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    # Smooth radial noise: a few low harmonics with random phase.
    r = np.ones(points)
    for harmonic in (2, 3, 5, 7):
        r += irregularity * rng.uniform(0.3, 1.0) / harmonic * 2 * np.sin(harmonic * angles + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.35, 1.8)
    return [(float(cx + ri * np.cos(a)), float(cy + ri * np.sin(a))) for ri, a in zip(r, angles)]


def render(cls: str, index: int, size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng([seed, CLASSES.index(cls), index])
    skin = np.array([rng.uniform(200, 240), rng.uniform(160, 200), rng.uniform(130, 170)])
    base = np.ones((size, size, 3)) * skin + rng.normal(0, 6, (size, size, 3))
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    radius = size * rng.uniform(0.22, 0.32)

    if cls == "melanoma":  # asymmetric, irregular border, dark with blue-grey veil
        draw.polygon(
            _blob(rng, cx, cy, radius, 0.45), fill=tuple(int(v) for v in rng.uniform([40, 20, 15], [80, 45, 35]))
        )
        for _ in range(rng.integers(3, 6)):
            ox, oy = cx + rng.uniform(-0.5, 0.5) * radius, cy + rng.uniform(-0.5, 0.5) * radius
            rr = radius * rng.uniform(0.15, 0.3)
            draw.ellipse(
                (ox - rr, oy - rr, ox + rr, oy + rr),
                fill=(int(rng.uniform(70, 100)), int(rng.uniform(80, 110)), int(rng.uniform(120, 150))),
            )
        blur = 0.6
    elif cls == "nevus":  # round, symmetric, smooth border, even mid brown
        draw.polygon(
            _blob(rng, cx, cy, radius * 0.85, 0.06),
            fill=tuple(int(v) for v in rng.uniform([130, 85, 55], [165, 110, 75])),
        )
        blur = 1.5
    elif cls == "basal_cell_carcinoma":  # pink pearly nodule with branching red vessels
        draw.polygon(
            _blob(rng, cx, cy, radius, 0.15), fill=tuple(int(v) for v in rng.uniform([215, 140, 145], [240, 170, 175]))
        )
        for _ in range(rng.integers(4, 8)):
            x, y = cx, cy
            angle = rng.uniform(0, 2 * np.pi)
            for _ in range(5):
                angle += rng.uniform(-0.7, 0.7)
                nx, ny = x + np.cos(angle) * radius * 0.25, y + np.sin(angle) * radius * 0.25
                draw.line((x, y, nx, ny), fill=(int(rng.uniform(170, 200)), 30, 40), width=max(1, size // 64))
                x, y = nx, ny
        blur = 0.5
    else:  # benign_keratosis: tan, waxy, striped "brain-like" texture
        draw.polygon(
            _blob(rng, cx, cy, radius, 0.2), fill=tuple(int(v) for v in rng.uniform([160, 120, 70], [190, 150, 95]))
        )
        step = max(2, size // 20)
        tilt = rng.uniform(-0.5, 0.5) * size
        for x in range(int(cx - radius), int(cx + radius), step):
            draw.line(
                (x, cy - radius * 0.8, x + tilt * 0.2, cy + radius * 0.8), fill=(110, 80, 45), width=max(1, step // 3)
            )
        blur = 0.8
    img = img.filter(ImageFilter.GaussianBlur(blur * size / 96))
    noise = rng.normal(0, 4, (size, size, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8), "RGB")
