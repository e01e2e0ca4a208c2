"""Small real images for tests, made on the fly (never copied from ../shared)."""
from __future__ import annotations

from pathlib import Path

from components import synthetic


def write_class_folder(root: Path, classes: tuple[str, ...] = synthetic.CLASSES, per_class: int = 6, size: int = 48,
                       seed: int = 7, ext: str = "jpg") -> Path:
    """``root/<class>/<n>.<ext>``: synthetic lesion-like images a small CNN can learn."""
    for cls in classes:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synthetic.render(cls if cls in synthetic.CLASSES else synthetic.CLASSES[hash(cls) % 4], i, size, seed).save(
                folder / f"{cls[:3]}_{i:03d}.{ext}", quality=92)
    return root
