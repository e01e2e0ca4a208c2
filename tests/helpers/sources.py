"""Small sources in each layout ingest reads: Kaggle Train/Test folders and the CSV formats."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd

from tests.helpers.images import jpeg_bytes, lesion


def kaggle_files(per_class: int = 3) -> dict[str, bytes]:
    files = {}
    for split, offset in (("Train", 0), ("Test", 100)):
        for cls in ("melanoma", "nevus"):
            for i in range(per_class):
                files[f"{split}/{cls}/{cls[:3]}_{i}.jpg"] = jpeg_bytes(lesion(offset + i, cls))
    return files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive of ``files`` (member name -> content), in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.write_bytes(zip_bytes(files))
    return path


CLASSES = {"MEL": "melanoma", "NV": "nevus", "BCC": "basal_cell_carcinoma"}


def csv_source(root: Path, fmt: str) -> Path:
    """Nine images of three classes plus the label file of ``fmt``; image 0 has no row,
    and the label file names one image that is not there. Each row's patient metadata in
    the format's own columns: sex alternating female/male, age 20 + 10 * i (ISIC 2019,
    SIIM 2020: in age_approx), body site "back" or "face" by i % 2 (HAM10000 also dx_type
    histo; ISIC 2019's in its metadata CSV)."""
    rows = []
    for i in range(9):
        code = list(CLASSES)[i % 3]
        name = f"ISIC_{i:07d}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{name}.jpg").write_bytes(
            jpeg_bytes(lesion(i, CLASSES[code].replace("basal_cell_carcinoma", "nevus")))
        )
        rows.append((name, code, f"L{i // 2}"))
    rows.append(("ISIC_9999999", "MEL", "L99"))
    rows = rows[1:]
    if fmt == "ham10000":
        frame = pd.DataFrame(
            {
                "lesion_id": [r[2] for r in rows],
                "image_id": [r[0] for r in rows],
                "dx": [r[1].lower() for r in rows],
                "age": [20 + 10 * int(r[0][-4:]) for r in rows],
                "sex": [("female", "male")[int(r[0][-4:]) % 2] for r in rows],
                "localization": [("back", "face")[int(r[0][-4:]) % 2] for r in rows],
                "dx_type": "histo",
            }
        )
        frame.to_csv(root / "HAM10000_metadata.csv", index=False)
    elif fmt == "isic2019":
        frame = pd.DataFrame({"image": [r[0] for r in rows]})
        for code in ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"):
            frame[code] = [1.0 if r[1] == code else 0.0 for r in rows]
        frame.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
        pd.DataFrame(
            {
                "image": [r[0] for r in rows],
                "lesion_id": [r[2] for r in rows],
                "age_approx": [20 + 10 * int(r[0][-4:]) for r in rows],
                "sex": [("female", "male")[int(r[0][-4:]) % 2] for r in rows],
                "anatom_site_general": [("back", "face")[int(r[0][-4:]) % 2] for r in rows],
            }
        ).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    else:
        names = {"MEL": "melanoma", "NV": "nevus", "BCC": "basal cell carcinoma"}
        frame = pd.DataFrame(
            {
                "image_name": [r[0] for r in rows],
                "patient_id": [r[2] for r in rows],
                "diagnosis": [names[r[1]] for r in rows],
                "benign_malignant": ["malignant" if r[1] == "MEL" else "benign" for r in rows],
                "target": [int(r[1] == "MEL") for r in rows],
                "age_approx": [20 + 10 * int(r[0][-4:]) for r in rows],
                "sex": [("female", "male")[int(r[0][-4:]) % 2] for r in rows],
                "anatom_site_general_challenge": [("back", "face")[int(r[0][-4:]) % 2] for r in rows],
            }
        )
        frame.to_csv(root / "train.csv", index=False)
    (root / "other.csv").write_text("x,y\n1,2\n")
    return root
