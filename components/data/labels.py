"""Labels: one class vocabulary for every source (HAM10000's ``mel``, ISIC 2019's
``MEL`` and the Kaggle ``melanoma`` folder are the same class), and how each source
format names an image's label and group (lesion or patient)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

# canonical name -> aliases as they appear in the public collections
VOCABULARY: dict[str, tuple[str, ...]] = {
    "melanoma": ("mel", "melanoma", "malignant melanoma"),
    "nevus": ("nv", "nevus", "naevus", "melanocytic nevus", "melanocytic nevi"),
    "basal_cell_carcinoma": ("bcc", "basal cell carcinoma"),
    "actinic_keratosis": ("akiec", "ak", "actinic keratosis", "actinic keratoses"),
    # HAM10000 and ISIC 2019 define BKL as solar lentigo + lichen-planus-like keratosis
    # (+ seborrheic keratosis, which the Kaggle set keeps apart, so we do too).
    "benign_keratosis": (
        "bkl",
        "pigmented benign keratosis",
        "benign keratosis",
        "benign keratosis-like lesions",
        "solar lentigo",
        "lentigo nos",
        "lichenoid keratosis",
    ),
    "seborrheic_keratosis": ("seborrheic keratosis",),
    "dermatofibroma": ("df", "dermatofibroma"),
    "vascular_lesion": ("vasc", "vascular lesion", "vascular lesions"),
    "squamous_cell_carcinoma": ("scc", "squamous cell carcinoma"),
}
# Labels that say "no diagnosis": the file is quarantined, never trained on.
MISSING = {"", "nan", "none", "null", "unk", "unknown", "n/a"}

_ALIASES = {alias: name for name, aliases in VOCABULARY.items() for alias in aliases}


def _key(raw: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(raw).strip().lower())


def canonical_label(raw: object, class_map: dict[str, str] | None = None) -> str | None:
    """The canonical class for a source label, or None when it names no diagnosis.

    ``class_map`` (from the config) wins over the built-in vocabulary; a label found
    in neither is kept under its own snake_case name, so custom folder classes work.
    """
    if raw is None:
        return None
    key = _key(raw)
    if class_map:
        mapped = {_key(k): v for k, v in class_map.items()}
        if key in mapped:
            return mapped[key] or None
    if key in MISSING:
        return None
    if key in _ALIASES:
        return _ALIASES[key]
    return re.sub(r"[^a-z0-9]+", "_", key).strip("_") or None


# ---- source formats ------------------------------------------------------------

ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# The columns that identify each CSV format (its label file).
FORMAT_COLUMNS: dict[str, set[str]] = {
    "ham10000": {"image_id", "dx"},
    "isic2019": {"image", "MEL", "NV", "BCC"},
    "siim2020": {"image_name", "diagnosis"},
}


# The metadata ingest keeps per image (components.evaluation.subgroups reports by them), and
# each format's column for it; ISIC 2019's are in its metadata CSV (with the lesion ids).
# A value the source lacks is ''. docs/data.md lists them per format.
METADATA_COLUMNS = ("sex", "age", "body_site", "confirmation")
SOURCE_METADATA: dict[str, dict[str, str]] = {
    "ham10000": {"sex": "sex", "age": "age", "body_site": "localization", "confirmation": "dx_type"},
    "isic2019": {"sex": "sex", "age": "age_approx", "body_site": "anatom_site_general"},
    "siim2020": {"sex": "sex", "age": "age_approx", "body_site": "anatom_site_general_challenge"},
}

# What a label file's group id names, plural: evaluation resamples these, and scores
# lesions as well as images where they are lesions.
GROUP_UNITS = {"ham10000": "lesions", "isic2019": "lesions", "siim2020": "patients"}


@dataclass(frozen=True)
class LabelTable:
    """Labels from a CSV: image id (the file name without extension) -> label and group."""

    format: str
    label_file: str  # relpath of the CSV the labels come from
    source_labels: dict[str, str]
    group_ids: dict[str, str]
    # Other CSVs that were read for group ids (ISIC 2019 metadata with lesion_id).
    metadata_files: tuple[str, ...] = ()
    # image id -> {metadata column: value} (METADATA_COLUMNS), for the images the source describes
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)


def csv_format(columns: list[str]) -> str | None:
    """The label-file format whose columns ``columns`` has, if any."""
    present = set(columns)
    for fmt, needed in FORMAT_COLUMNS.items():
        if needed <= present:
            return fmt
    return None


def _text(value: object) -> str:
    return "" if pd.isna(value) else str(value).strip()


def _texts(values: pd.Series) -> list[str]:
    """_text of each value, a column at a time (a label file has one row per image)."""
    values = pd.Series(values, dtype=object)
    return values.where(values.notna(), "").astype(str).str.strip().tolist()


def _isic2019_label(row: pd.Series, columns: list[str]) -> str:
    """The one-hot column set to 1; '' when none or several are (no usable label)."""
    hot = [c for c in columns if _text(row[c]) not in ("", "0", "0.0")]
    return hot[0] if len(hot) == 1 else ""


def label_table(fmt: str, csvs: dict[str, pd.DataFrame]) -> LabelTable:
    """Build the label table of format ``fmt`` from the CSVs found (relpath -> frame).

    Raises ValueError with a one-line message when no CSV has the format's columns, or
    several do (which labels to trust would be a guess).
    """
    label_files = [path for path, frame in csvs.items() if csv_format(list(frame.columns)) == fmt]
    if not label_files:
        raise ValueError(f"format {fmt} needs a CSV with columns {sorted(FORMAT_COLUMNS[fmt])}; none found")
    if len(label_files) > 1:
        raise ValueError(f"several {fmt} label files ({', '.join(sorted(label_files))}): keep one")
    path = label_files[0]
    frame = csvs[path]
    if fmt == "ham10000":
        ids, labels = frame["image_id"], frame["dx"]
        groups = frame["lesion_id"] if "lesion_id" in frame else pd.Series("", index=frame.index)
    elif fmt == "siim2020":
        ids, labels = frame["image_name"], frame["diagnosis"]
        groups = frame["patient_id"] if "patient_id" in frame else pd.Series("", index=frame.index)
    else:
        onehot = [c for c in ISIC2019_CLASSES if c in frame.columns]
        ids, labels = frame["image"], frame.apply(_isic2019_label, axis=1, columns=onehot)
        groups = pd.Series("", index=frame.index)
    ids, labels, groups = _texts(ids), _texts(labels), _texts(groups)
    source_labels = {i: label for i, label in zip(ids, labels) if i}
    group_ids = {i: g for i, g in zip(ids, groups) if i and g}
    metadata_files: list[str] = []
    metadata = _metadata(ids, frame, fmt)
    if fmt == "isic2019":
        # ISIC_2019_Training_Metadata.csv carries the lesion ids (and the patients' sex,
        # age and body site) the ground truth lacks.
        for other, meta in csvs.items():
            if other != path and {"image", "lesion_id"} <= set(meta.columns):
                metadata_files.append(other)
                meta_ids = _texts(meta["image"])
                group_ids.update({i: g for i, g in zip(meta_ids, _texts(meta["lesion_id"])) if i and g})
                metadata.update(_metadata(meta_ids, meta, fmt))
    return LabelTable(fmt, path, source_labels, group_ids, tuple(metadata_files), metadata)


def _metadata(ids: list[str], frame: pd.DataFrame, fmt: str) -> dict[str, dict[str, str]]:
    """image id -> the METADATA_COLUMNS ``frame`` has (SOURCE_METADATA), for ids with any."""
    present = {ours: _texts(frame[theirs]) for ours, theirs in SOURCE_METADATA[fmt].items() if theirs in frame}
    if not present:
        return {}
    rows = ({ours: values[n] for ours, values in present.items() if values[n]} for n in range(len(ids)))
    return {i: row for i, row in zip(ids, rows) if i and row}
