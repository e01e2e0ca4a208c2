"""Image decoding and resizing shared by ingest, normalize, evaluate and predict, so a
model sees at prediction time exactly the pixels it was trained on."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Decide before decoding: Pillow raises DecompressionBombError above twice this.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is the quarantine reason."""


def decode_rgb(data: bytes) -> Image.Image:
    """Fully decode ``data`` into an RGB image with its EXIF orientation applied."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"too many pixels ({width}x{height}, limit {MAX_PIXELS})")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def fit_square(img: Image.Image, size: int, mode: str = "pad") -> np.ndarray:
    """Resize to ``size`` x ``size`` keeping the aspect ratio.

    ``pad`` letterboxes the whole image on black (nothing of the lesion is lost);
    ``crop`` fills the square from the centre.
    """
    width, height = img.size
    if mode == "crop":
        scale = size / min(width, height)
    elif mode == "pad":
        scale = size / max(width, height)
    else:
        raise ValueError(f"resize_mode must be 'pad' or 'crop', not {mode!r}")
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def load_for_model(data: bytes, size: int, mode: str = "pad") -> np.ndarray:
    """Bytes of any supported image -> ``(size, size, 3)`` uint8, as the shards hold."""
    return fit_square(decode_rgb(data), size, mode)
