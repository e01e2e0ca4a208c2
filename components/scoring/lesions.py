"""Lesion-level scores: a lesion photographed several times is one diagnosis, so its
images' probabilities are averaged into one prediction per lesion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def group_index(ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(the distinct ids sorted, each row's position among them); a row with no id ('')
    is a group of its own, named ``image <row>``."""
    keys = [g if g else f"image {i}" for i, g in enumerate(ids)]
    names, index = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    return names.tolist(), index.ravel()


def lesion_means(probs: np.ndarray, lesion_ids: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(lesion ids sorted, each lesion's mean probabilities, its number of images); an
    image with no lesion id is a lesion of its own (group_index)."""
    names, index = group_index(lesion_ids)
    images = np.bincount(index, minlength=len(names))
    sums = np.zeros((len(names), probs.shape[1]))
    np.add.at(sums, index, probs)
    return names, sums / images[:, None], images


def lesion_labels(y_true: np.ndarray, lesion_ids: Sequence[str], classes: int) -> np.ndarray:
    """Each lesion's class (order of lesion_means): its images' most frequent label, the
    lowest class index on a tie (HAM10000 gives all images of a lesion one diagnosis)."""
    names, index = group_index(lesion_ids)
    votes = np.zeros((len(names), classes), int)
    np.add.at(votes, (index, np.asarray(y_true, dtype=int)), 1)
    return votes.argmax(1)
