"""Image decoding and resizing shared by ingest, normalize, evaluate and predict, so a
model sees at prediction time exactly the pixels it was trained on."""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
from PIL import Image, ImageFile, ImageOps

# File suffixes read as images (ingest lists them; predict finds them in folders).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}

# Default pixel limit; ingest passes data.max_image_pixels. We check it ourselves from
# the header, before any pixel is decoded, so Pillow's own (warning-based) guard is off.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = None
# A truncated file must fail, never decode as a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is the quarantine reason and
    ``code`` its category (empty_file, not_an_image, too_many_pixels, corrupt)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """``data`` opened (its header read, nothing decoded), or the error a user reads: an
    empty file, no known format, a corrupt header, or more than ``max_pixels`` pixels."""
    if not data:
        raise ImageError("empty file (0 bytes)", "empty_file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageError("not an image: content is no known image format", "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt image header: {exc}", "corrupt") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"too many pixels ({width}x{height} > {max_pixels}), refused before decoding", "too_many_pixels"
        )
    return img


# Bytes a pixel costs while it is decoded and made 8-bit RGB (to_rgb), by mode: 16- and
# 32-bit greyscale go through float64 arrays (26 B at the peak: the raw 2, the array,
# its scaled copy and the clipped one); other modes hold their bands, an RGBA and the RGB.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
HIGH_DEPTH_DECODE_BYTES = 28


def decode_bytes(img: Image.Image) -> int:
    """What decoding ``img`` (opened, its size final) holds at once, in bytes."""
    per_pixel = HIGH_DEPTH_DECODE_BYTES if img.mode in HIGH_DEPTH_MODES else 4 * len(img.getbands()) + 4
    return img.width * img.height * per_pixel


# glibc raises its mmap threshold after each large free (up to 32 MiB), after which a
# decode's arrays come from the decoding thread's own heap and stay there when freed: with
# 8 threads, 8 x 110 MB resident for 16-bit 2000x2000 PNGs decoded one at a time (637 MB
# against 113 MB with a fixed threshold, measured). A fixed threshold maps them each time.
MMAP_THRESHOLD_BYTES = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # malloc.h


@functools.cache
def _return_large_buffers_to_the_os() -> None:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator keeps its own ways
        pass


class DecodeBudget:
    """Bytes that the threads decoding at once may hold together (data.decode_memory_mb):
    a decode waits until its share is free. One decode larger than the whole budget
    waits for all of it and runs alone, so memory is bounded by the larger of the
    budget and one image, whatever the number of threads."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.held = 0
        self._changed = threading.Condition()
        _return_large_buffers_to_the_os()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        share = min(nbytes, self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self.held + share <= self.limit)
            self.held += share
        try:
            yield
        finally:
            with self._changed:
                self.held -= share
                self._changed.notify_all()


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Fully decode ``data`` into an RGB image with its EXIF orientation applied.

    The pixel count is read from the header and refused before decoding, so a
    decompression bomb never allocates its pixels.
    """
    img = _open_header(data, max_pixels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    # Pillow's decoders raise many types on hostile input (struct.error, KeyError from
    # broken EXIF, ...); any failure while decoding means the file cannot be used. But
    # not a MemoryError: the machine ran out, the file may be fine (and must not be
    # quarantined in a cached step's output).
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"corrupt or truncated image: {exc}", "corrupt") from None


def decode_rgb_reduced(
    data: bytes, min_side: int, max_pixels: int = MAX_PIXELS, budget: DecodeBudget | None = None
) -> tuple[Image.Image, int, int, str]:
    """Decode ``data`` as decode_rgb does (same checks, same errors), but a JPEG at the
    smallest of 1/1, 1/2, 1/4, 1/8 scale that keeps both sides at least ``min_side``
    (libjpeg scales in the DCT: cheaper than a full decode, and every byte is still
    decoded, so a truncated or corrupt file still fails), within ``budget`` when given.
    Returns the image, the full width and height (EXIF orientation applied) and the
    format's name."""
    img = _open_header(data, max_pixels)
    width, height = img.size
    fmt = img.format or ""
    try:
        if fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            img.draft(img.mode, (min_side, min_side))
        with budget.hold(decode_bytes(img)) if budget else nullcontext():
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):  # turned a quarter: the sides swap
                width, height = height, width
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img), width, height, fmt
    except MemoryError:  # as in decode_rgb
        raise
    except Exception as exc:  # noqa: BLE001  (as in decode_rgb)
        raise ImageError(f"corrupt or truncated image: {exc}", "corrupt") from None


# The 8 lowest of the 32 DCT-II basis rows (scipy.fftpack.dct's scaling): pHash keeps
# only the 8x8 lowest frequencies, so two small products give them.
_DCT_LOW = 2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32) + 1) / 64)


def phash_pixels(img: Image.Image) -> np.ndarray:
    """What pHash hashes: the image in greyscale, LANCZOS-resized to 32x32 (uint8)."""
    return np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS))


# Images of at most this many pixels are resized together by phash_pixels_and_thumbs; a
# larger one (a PNG or TIFF, which is decoded at full size) is resized alone, as soon as it
# is decoded, so that a batch of them is never held in memory at once.
STACK_MAX_PIXELS = 256 * 256


def _row_pass(stack: np.ndarray, width: int, resample: Image.Resampling) -> np.ndarray:
    """Pillow's resize of the rows of each of ``stack``'s images (k x height x width[ x 3])
    to ``width``, in one call on the images one above the other: a resize of the width
    alone is a single pass in which every row is resized on its own."""
    k, height = stack.shape[:2]
    tall = Image.fromarray(np.ascontiguousarray(stack).reshape(k * height, *stack.shape[2:]))
    out = np.asarray(tall.resize((width, k * height), resample))
    return out.reshape(k, height, width, *stack.shape[3:])


def _stack_resized(
    stack: np.ndarray, size: tuple[int, int], resample: Image.Resampling, rows_first: bool
) -> np.ndarray:
    """Image.resize(size, resample) of each of ``stack``'s images: Pillow resizes in two
    passes, the rows then the columns or the other way round, rounding to 8 bits between
    them; a column pass is a row pass of the transposed images."""
    if rows_first:
        return _row_pass(_row_pass(stack, size[0], resample).swapaxes(1, 2), size[1], resample).swapaxes(1, 2)
    return _row_pass(_row_pass(stack.swapaxes(1, 2), size[1], resample).swapaxes(1, 2), size[0], resample)


@functools.lru_cache(maxsize=1024)
def _rows_first(
    bands: int, size_in: tuple[int, int], size_out: tuple[int, int], resample: Image.Resampling
) -> bool | None:
    """Whether this Pillow resizes an image of ``size_in`` to ``size_out`` rows first (it
    picks the order from the sizes), found by resizing a random image of that size both
    ways; None when that does not tell one order from the other."""
    shape = (size_in[1], size_in[0]) + ((bands,) if bands > 1 else ())
    probe = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    want = np.asarray(Image.fromarray(probe).resize(size_out, resample))
    found = [
        first
        for first in (True, False)
        if np.array_equal(_stack_resized(probe[None], size_out, resample, first)[0], want)
    ]
    return found[0] if len(found) == 1 else None


def phash_pixels_and_thumbs(imgs: list[Image.Image], thumb_side: int) -> tuple[np.ndarray, np.ndarray]:
    """phash_pixels of each of the RGB ``imgs`` (k x 32 x 32) and its BOX thumbnail
    (k x thumb_side x thumb_side x 3): the same bytes as one image at a time, but images
    of one size (and at most STACK_MAX_PIXELS) are resized together, in one Pillow call
    a pass (_stack_resized), which computes the filter's weights once for all of them
    (0.11 against 0.13 ms an image for both resizes of HAM10000's 100x75 decodes, 16 at
    a time, one thread); other sizes, and sizes whose pass order _rows_first cannot
    tell, are resized one image at a time."""
    pixels = np.empty((len(imgs), 32, 32), dtype=np.uint8)
    thumbs = np.empty((len(imgs), thumb_side, thumb_side, 3), dtype=np.uint8)
    lanczos, box, thumb = Image.Resampling.LANCZOS, Image.Resampling.BOX, (thumb_side, thumb_side)
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(imgs):
        by_size.setdefault(img.size, []).append(k)
    for size, members in by_size.items():
        together = len(members) > 1 and size[0] * size[1] <= STACK_MAX_PIXELS
        grey_first = _rows_first(1, size, (32, 32), lanczos) if together else None
        rgb_first = _rows_first(3, size, thumb, box) if together else None
        if grey_first is None or rgb_first is None:
            for k in members:
                pixels[k] = phash_pixels(imgs[k])
                thumbs[k] = np.asarray(imgs[k].resize(thumb, box))
            continue
        tall = Image.new("RGB", (size[0], size[1] * len(members)))
        for row, k in enumerate(members):
            tall.paste(imgs[k], (0, row * size[1]))
        rgb = np.asarray(tall).reshape(len(members), size[1], size[0], 3)
        grey = np.asarray(tall.convert("L")).reshape(len(members), size[1], size[0])
        pixels[members] = _stack_resized(grey, (32, 32), lanczos, grey_first)
        thumbs[members] = _stack_resized(rgb, thumb, box, rgb_first)
    return pixels, thumbs


def phash_hex_batch(pixels: np.ndarray) -> list[str]:
    """imagehash.phash's hex string of each of ``pixels`` (k x 32 x 32, phash_pixels):
    its DCT (the 8x8 lowest frequencies, equal to scipy's to ~1e-10) and median, for k
    images in a few array operations instead of a dozen per image."""
    low = _DCT_LOW @ pixels.astype(np.float64) @ _DCT_LOW.T
    flat = low.reshape(len(low), 64)
    middle = np.sort(flat, axis=1)[:, 31:33]
    bits = np.packbits(flat > ((middle[:, 0] + middle[:, 1]) / 2)[:, None], axis=1)  # np.median's value
    return [row.tobytes().hex() for row in bits]


def phash_hex(img: Image.Image) -> str:
    """imagehash.phash(img) as its hex string: the same greyscale 32x32 LANCZOS resize,
    DCT and median."""
    return phash_hex_batch(phash_pixels(img)[None])[0]


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (and 32-bit) greyscale: map the 16-bit range to 8 bits, as a viewer does.
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
        img = Image.fromarray((arr * scale).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
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


def load_for_model(data: bytes, size: int, mode: str = "pad", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of any supported image -> ``(size, size, 3)`` uint8, as the shards hold."""
    return fit_square(decode_rgb(data, max_pixels), size, mode)
