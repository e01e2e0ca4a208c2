"""``lesionpipe predict``: every class's probability and the predicted class of image
files and folders, one CSV row per file."""
from __future__ import annotations

import csv
from pathlib import Path

from components.core.errors import UserError
from components.data.imaging import IMAGE_EXTENSIONS
from components.scoring.inference import LoadedModel


def find_images(paths: list[str]) -> list[str]:
    """Image files named directly, or found below named folders (sorted)."""
    found: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found += sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(str(path))
        else:
            raise UserError(f"no such image or folder: {p}")
    if not found:
        raise UserError(f"no images found in {', '.join(paths)}")
    return found


def predict_files(loaded: LoadedModel, files: list[str], melanoma_class: str = "melanoma", batch_size: int = 64,
                  tta: bool = False) -> list[dict]:
    """One row per file: path, predicted class, every class's probability, the melanoma
    probability, the reason when the file could not be read as an image, and whether the
    model was trained on synthetic data."""
    probs, errors = loaded.probabilities_of_files(files, batch_size, tta)
    rows = []
    for path, p, error, predicted in zip(files, probs, errors, loaded.predicted_classes(probs)):
        row: dict = {"path": path, "predicted_class": "" if error else predicted}
        row.update({f"p_{c}": ("" if error else round(float(v), 6)) for c, v in zip(loaded.classes, p)})
        if melanoma_class in loaded.classes:
            row["melanoma_probability"] = "" if error else round(float(p[loaded.classes.index(melanoma_class)]), 6)
        row["error"] = error
        row["synthetic_model"] = loaded.synthetic
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
