"""A model's answer about each image, one definition for ``lesionpipe predict`` and the
served model (components.scoring.served_model): every class's probability, the class
decided (with the model's decision offsets), the melanoma probability, the melanoma flag
at the model's operating point and the refer flag where the model has them, which model
answered, and why an image has no answer."""

from __future__ import annotations

import numpy as np

from components.scoring.inference import MELANOMA, LoadedModel

# The columns of an answer that are not a class's probability, in order.
DECIDED, MELANOMA_PROBABILITY, MELANOMA_FLAG, UNCERTAINTY, REFER, MODEL_VERSION, ERROR = (
    "predicted_class",
    "melanoma_probability",
    "melanoma_flag",
    "uncertainty",
    "refer",
    "model_version",
    "error",
)


def probability_column(class_name: str) -> str:
    return f"p_{class_name}"


def image_answers(
    loaded: LoadedModel,
    probs: np.ndarray,
    errors: list[str],
    melanoma_class: str = MELANOMA,
    views: np.ndarray | None = None,
) -> list[dict]:
    """One answer per row of ``probs`` (``loaded``'s probabilities of images; a row whose
    error is not '' has no answer: its values are None and its error says why). The
    melanoma probability is there when the model knows ``melanoma_class``; the flags
    when the model has an operating point (LoadedModel.melanoma_flags) and a referral
    threshold (LoadedModel.refer_flags). The uncertainty is the probabilities' and, given
    the TTA ``views``' probabilities, their disagreement too (components.scoring.referral),
    as the referral threshold was fitted."""
    decided = loaded.predicted_classes(probs) if len(probs) else []
    melanoma = loaded.classes.index(melanoma_class) if melanoma_class in loaded.classes else None
    flags = loaded.melanoma_flags(probs) if len(probs) else None
    uncertainty = loaded.uncertainty(probs, views) if len(probs) else np.zeros(0)
    refer = loaded.refer_flags(uncertainty) if len(probs) else None
    answers = []
    for i, error in enumerate(errors):
        ok = not error
        answer: dict = {DECIDED: decided[i] if ok else None}
        answer.update({probability_column(c): float(p) if ok else None for c, p in zip(loaded.classes, probs[i])})
        if melanoma is not None:
            answer[MELANOMA_PROBABILITY] = float(probs[i, melanoma]) if ok else None
        if flags is not None:
            answer[MELANOMA_FLAG] = bool(flags[i]) if ok else None
        answer[UNCERTAINTY] = float(uncertainty[i]) if ok else None
        if refer is not None:
            answer[REFER] = bool(refer[i]) if ok else None
        answer[MODEL_VERSION] = loaded.version
        answer[ERROR] = error
        answers.append(answer)
    return answers
