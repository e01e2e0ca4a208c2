"""Synthetic lesion images as PIL images and as JPEG bytes."""

from __future__ import annotations

import io

from PIL import Image

from components.data import synthetic


def lesion(index: int, cls: str = "melanoma", size: int = 64) -> Image.Image:
    return synthetic.render(cls, index, size, seed=11)


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
