"""Small real images for tests, made on the fly (never copied from ../shared)."""

from __future__ import annotations

from pathlib import Path

from components.data import synthetic


def write_class_folder(
    root: Path,
    classes: tuple[str, ...] = synthetic.CLASSES,
    per_class: int = 6,
    size: int = 48,
    seed: int = 7,
    ext: str = "jpg",
) -> Path:
    """``root/<class>/<n>.<ext>``: synthetic lesion-like images a small CNN can learn."""
    for k, cls in enumerate(classes):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        # Other class names borrow a synthetic class's look, with their own image indices
        # so that no two files are identical.
        drawn_as = cls if cls in synthetic.CLASSES else synthetic.CLASSES[k % len(synthetic.CLASSES)]
        for i in range(per_class):
            synthetic.render(drawn_as, i + 1000 * k, size, seed).save(folder / f"{cls[:3]}_{i:03d}.{ext}", quality=92)
    return root
