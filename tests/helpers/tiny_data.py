"""Tiny real datasets for the training/evaluation tests: the project's own synthetic
images through the real ingest -> split -> normalize steps, at 32 px."""

from __future__ import annotations

from pathlib import Path

from components.data.ingest import ingest
from components.data.normalize import normalize
from components.data.split import split
from pipeline.config import RunConfig

# A model's baked-in per-channel mean and std where no shards give them.
MEAN, STD = [120.0, 110.0, 100.0], [50.0, 50.0, 50.0]


def tiny_config(**train) -> RunConfig:
    """A config for seconds-long CPU runs; ``train`` overrides train.* values."""
    return RunConfig.from_dict(
        {
            "data": {
                "image_size": 32,
                "synthetic_images_per_class": 16,
                "synthetic_image_size": 48,
                "val_fraction": 0.25,
                "test_fraction": 0.25,
                "num_shards": 2,
            },
            "train": {"epochs": 2, "batch_size": 16, "early_stopping_patience": 10, **train},
            "evaluate": {"worst_images": 4, "gradcam_images": 2},
        }
    )


def make_tiny_shards(root: Path, cfg: RunConfig | None = None) -> Path:
    """Normalized TFRecord shards (train/val/test) of the synthetic 4-class set."""
    cfg = cfg or tiny_config()
    ingest("", cfg.data, root / "ingest")
    split(root / "ingest", cfg.data, root / "split")
    normalize(root / "split", cfg.data, root / "normalized", synthetic=True)
    return root / "normalized"
