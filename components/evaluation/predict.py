"""``lesionpipe predict``: every class's probability and the predicted class of image
files and folders, one CSV row per file; and, given which lesion each image shows, one
row per lesion (its images' probabilities averaged)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from components.core.errors import UserError
from components.data.imaging import IMAGE_EXTENSIONS
from components.scoring.answers import image_answers
from components.scoring.inference import LoadedModel
from components.scoring.lesions import lesion_means

# Accepted column names of a --lesions CSV, first found wins: HAM10000's metadata has image_id, lesion_id.
IMAGE_COLUMNS = ("image", "image_id", "image_name")
LESION_COLUMNS = ("lesion", "lesion_id")


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


def predict_files(
    loaded: LoadedModel, files: list[str], melanoma_class: str = "melanoma", batch_size: int = 64, tta: bool = False
) -> list[dict]:
    """One row per file: its path, the model's answer about it (components.scoring.answers:
    the same as the served model's: (calibrated) probabilities rounded to 6 decimals, the
    melanoma flag and the refer flag where the model stores an operating point and a
    referral threshold; '' where the file could not be read as an image, with the reason in
    the error column), and whether the model was trained on synthetic data."""
    probs, views, errors = loaded.scores_of_files(files, batch_size, tta)
    rows = []
    answers = image_answers(loaded, probs, errors, melanoma_class, views if tta else None)
    for path, answer in zip(files, answers):
        row: dict = {"path": path}
        row.update({k: "" if v is None else round(v, 6) if isinstance(v, float) else v for k, v in answer.items()})
        row["synthetic_model"] = loaded.synthetic
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_lesions(path: str | Path) -> dict[str, str]:
    """Image name (the file name without extension) -> lesion id, from a CSV with an image
    column (IMAGE_COLUMNS) and a lesion column (LESION_COLUMNS)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the lesions CSV {path}: {exc}") from None
    image = next((c for c in IMAGE_COLUMNS if c in frame.columns), None)
    lesion = next((c for c in LESION_COLUMNS if c in frame.columns), None)
    if image is None or lesion is None:
        raise UserError(
            f"{path}: a lesions CSV needs an image column ({', '.join(IMAGE_COLUMNS)}) and a lesion "
            f"column ({', '.join(LESION_COLUMNS)}); it has {', '.join(frame.columns)}"
        )
    return {Path(i).stem: g for i, g in zip(frame[image], frame[lesion]) if i and g}


def lesion_rows(
    rows: list[dict], loaded: LoadedModel, lesions: dict[str, str], melanoma_class: str = "melanoma"
) -> tuple[list[dict], int]:
    """One row per lesion of the readable images of ``rows`` (predict_files) that
    ``lesions`` names: the number of its images, the class predicted from, and every
    class's probability as, the mean of its images' probabilities; and how many readable
    images ``lesions`` does not name (left out)."""
    readable = [r for r in rows if not r["error"]]
    named = [r for r in readable if Path(r["path"]).stem in lesions]
    if not named:
        return [], len(readable)
    probs = np.array([[float(r[f"p_{c}"]) for c in loaded.classes] for r in named])
    names, means, images = lesion_means(probs, [lesions[Path(r["path"]).stem] for r in named])
    out = []
    flags = loaded.melanoma_flags(means)
    for i, (name, p, count, predicted) in enumerate(zip(names, means, images, loaded.predicted_classes(means))):
        row: dict = {"lesion": name, "images": int(count), "predicted_class": predicted}
        row.update({f"p_{c}": round(float(v), 6) for c, v in zip(loaded.classes, p)})
        if melanoma_class in loaded.classes:
            row["melanoma_probability"] = round(float(p[loaded.classes.index(melanoma_class)]), 6)
        if flags is not None:
            row["melanoma_flag"] = bool(flags[i])
        row["synthetic_model"] = loaded.synthetic
        out.append(row)
    return out, len(readable) - len(named)


def write_lesions(
    rows: list[dict],
    loaded: LoadedModel,
    lesions_csv: str | Path,
    out_path: str | Path,
    melanoma_class: str = "melanoma",
) -> str:
    """``predict --lesions``: the lesion rows of ``rows`` (lesion_rows) written beside
    ``out_path``, with ``_lesions`` before its extension; returns the console's line."""
    per_lesion, unnamed = lesion_rows(rows, loaded, read_lesions(lesions_csv), melanoma_class)
    if not per_lesion:
        raise UserError(f"{lesions_csv} names none of the readable images")
    out = Path(out_path).with_name(f"{Path(out_path).stem}_lesions{Path(out_path).suffix}")
    write_csv(per_lesion, out)
    left_out = f" ({unnamed} images not in {lesions_csv}, left out)" if unnamed else ""
    return f"{len(per_lesion)} lesions -> {out}{left_out}"
