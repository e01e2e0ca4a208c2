"""Augment: class-balancing oversampling of the TRAIN split only.

Minority classes get extra images made from their own training images by seeded random
transforms (flip, rotation, zoom, colour). Every generated image's source and exact
transform parameters are recorded in ``policy.json``, so the set can be audited and
regenerated. Val and test are never touched.
"""

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from kfp import dsl
from PIL import Image, ImageEnhance

from components.core import filenames
from components.core.settings import AugmentConfig
from components.data import tfrecords


@dataclass(frozen=True)
class Transform:
    flip_horizontal: bool
    flip_vertical: bool
    rotation_degrees: float
    zoom: float
    brightness: float
    contrast: float
    saturation: float
    hue_shift: float

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: AugmentConfig) -> "Transform":
        def around_one(spread: float) -> float:
            return float(rng.uniform(1 - spread, 1 + spread))

        return cls(
            flip_horizontal=bool(cfg.flip and rng.random() < 0.5),
            flip_vertical=bool(cfg.flip and rng.random() < 0.5),
            rotation_degrees=float(rng.uniform(-cfg.rotation, cfg.rotation) * 360),
            zoom=around_one(cfg.zoom),
            brightness=around_one(cfg.brightness),
            contrast=around_one(cfg.contrast),
            saturation=around_one(cfg.saturation),
            hue_shift=float(rng.uniform(-cfg.hue, cfg.hue)),
        )

    def apply(self, image: np.ndarray) -> np.ndarray:
        img = Image.fromarray(image, "RGB")
        if self.flip_horizontal:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.flip_vertical:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        size = img.width
        # Rotate about the centre, then zoom (>1 magnifies) back to the same size.
        img = img.rotate(self.rotation_degrees, resample=Image.Resampling.BILINEAR)
        crop = size / self.zoom
        offset = (size - crop) / 2
        img = img.transform(
            (size, size),
            Image.Transform.EXTENT,
            (offset, offset, offset + crop, offset + crop),
            resample=Image.Resampling.BILINEAR,
        )
        img = ImageEnhance.Brightness(img).enhance(self.brightness)
        img = ImageEnhance.Contrast(img).enhance(self.contrast)
        img = ImageEnhance.Color(img).enhance(self.saturation)
        if self.hue_shift:
            hsv = np.asarray(img.convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(self.hue_shift * 255)) % 256
            img = Image.fromarray(hsv, "HSV").convert("RGB")
        return np.asarray(img, dtype=np.uint8)


def plan_counts(class_counts: list[int], cfg: AugmentConfig) -> list[int]:
    """How many extra images each class gets."""
    if not cfg.enabled:
        return [0] * len(class_counts)
    target = cfg.target_per_class or max(class_counts)
    return [0 if n == 0 else max(0, min(target, int(n * cfg.max_factor)) - n) for n in class_counts]


def augment(normalized_dir: str | Path, cfg: AugmentConfig, output_dir: str | Path) -> dict:
    meta = tfrecords.read_meta(normalized_dir)
    paths = tfrecords.shard_paths(normalized_dir, "train")
    labels, uris = tfrecords.read_labels(paths)
    counts = np.bincount(labels, minlength=len(meta["classes"])).tolist()
    extra = plan_counts(counts, cfg)
    rng = np.random.default_rng(cfg.seed)
    # The plan first, from the labels alone: source record position -> (transform, label,
    # uri) of every extra image made from it, in the plan's order.
    planned: dict[int, list[tuple[Transform, int, str]]] = defaultdict(list)
    samples = []
    for label, n_extra in enumerate(extra):
        members = np.flatnonzero(labels == label)
        if n_extra == 0 or len(members) == 0:
            continue
        # Every member is used once before any is used twice.
        order = np.concatenate([rng.permutation(members) for _ in range(-(-n_extra // len(members)))])[:n_extra]
        for k, source in enumerate(order):
            transform = Transform.draw(rng, cfg)
            uri = f"{uris[source]}#aug{k}"
            planned[int(source)].append((transform, label, uri))
            samples.append(
                {"uri": uri, "source_uri": uris[source], "label": meta["classes"][label], **asdict(transform)}
            )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if planned:
        # Then one pass over the train shards, each extra image made as its source passes
        # by and written at once: one image in memory, not the split. The shard holds them
        # in their sources' record order (policy.json's samples keep the plan's order).
        tfrecords.write_shard(
            out / "train-00000-of-00001.tfrecord",
            (
                (transform.apply(image), label, uri)
                for source, image in tfrecords.images_at(paths, meta["image_size"], planned)
                for transform, label, uri in planned[source]
            ),
        )
    report = {
        "seed": cfg.seed,
        "policy": cfg.to_dict(),
        "classes": meta["classes"],
        "train_counts_before": counts,
        "added": extra,
        "train_counts_after": [c + e for c, e in zip(counts, extra)],
    }
    (out / filenames.AUGMENT_POLICY).write_text(json.dumps({**report, "samples": samples}, indent=1))
    return report


def augment_step(normalized: dsl.Input[dsl.Dataset], augment: dict, augmented: dsl.Output[dsl.Dataset]):
    """KFP wrapper: the augment step."""
    from components.core import atomic
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.settings import AugmentConfig
    from components.data.augment import augment as oversample

    with user_errors(), atomic.output_dir(augmented.path) as partial:
        report = oversample(normalized.path, load_section(AugmentConfig, augment, "augment."), partial)
    augmented.metadata["added"] = sum(report["added"])
