"""One class vocabulary for every source: HAM10000's ``mel``, ISIC 2019's ``MEL`` and
the Kaggle ``melanoma`` folder are the same class."""
from __future__ import annotations

import re

# canonical name -> aliases as they appear in the public collections
VOCABULARY: dict[str, tuple[str, ...]] = {
    "melanoma": ("mel", "melanoma", "malignant melanoma"),
    "nevus": ("nv", "nevus", "naevus", "melanocytic nevus", "melanocytic nevi"),
    "basal_cell_carcinoma": ("bcc", "basal cell carcinoma"),
    "actinic_keratosis": ("akiec", "ak", "actinic keratosis", "actinic keratoses"),
    "benign_keratosis": ("bkl", "pigmented benign keratosis", "benign keratosis", "benign keratosis-like lesions"),
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
