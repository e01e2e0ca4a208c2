"""Split: ingested files -> train / val / test.

Stratified by class, grouped so that no lesion (or patient, or identical-content
group) spans two subsets, deterministic for a seed. A Test split that the source
already has is kept as the test subset.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from components.core import filenames
from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data.union_find import UnionFind

SUBSETS = ("train", "val", "test")
# Copies that ingest ignored because they repeat an ingested image.
LINKING_REASONS = ("duplicate", "split_leak")


class SplitError(UserError):
    """The requested split cannot be made from this data: one line for the user."""


def group_keys(manifest: pd.DataFrame, link_near_duplicates: bool) -> pd.Series:
    """One key per ingested row: rows that share a lesion/patient id, identical content or
    (optionally) a near-duplicate group share a key.

    Copies that ingest set aside as duplicates still link their lesion id to the kept
    copy's, so two lesion ids that share an image stay on one side.
    """
    linked = manifest[(manifest.status == "ingested") | manifest.reason_code.isin(LINKING_REASONS)]
    sets = UnionFind()
    near = linked.near_duplicate_group if link_near_duplicates else pd.Series("", index=linked.index)
    for uri, gid, md5, near_group in zip(linked.uri, linked.group_id, linked.md5, near):
        node = f"file:{uri}"
        for key, prefix in ((gid, "group"), (md5, "md5"), (near_group, "near")):
            if key:
                sets.union(node, f"{prefix}:{key}")
    ingested = manifest[manifest.status == "ingested"]
    return pd.Series([sets.find(f"file:{u}") for u in ingested.uri], index=ingested.index)


def _assign(groups: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Greedy stratified assignment of whole groups to subsets, per class.

    ``groups`` has one row per group: key, label, size. Within each class the largest
    groups go first (ties in seeded random order) to the subset furthest below its
    target share, so each subset gets its share of every class.
    """
    assignment: dict[str, str] = {}
    names = [s for s, f in fractions.items() if f > 0]
    for label, members in groups.groupby("label", sort=True):
        if len(members) < len(names):
            raise SplitError(
                f"class {label!r} has {len(members)} independent groups (lesions/patients/images); "
                f"splitting it into {'/'.join(names)} needs at least {len(names)}"
            )
        order = members.assign(tiebreak=rng.permutation(len(members))).sort_values(
            ["size", "tiebreak"], ascending=[False, True]
        )
        total = order["size"].sum()
        filled = dict.fromkeys(names, 0)
        # Every subset first gets one group, so small classes still appear everywhere.
        for name, (_, row) in zip(sorted(names, key=lambda n: fractions[n]), order.iloc[::-1].iterrows()):
            assignment[row.key] = name
            filled[name] += row["size"]
        for _, row in order.iterrows():
            if row.key in assignment:
                continue
            name = max(names, key=lambda n: (fractions[n] * total - filled[n]) / fractions[n])
            assignment[row.key] = name
            filled[name] += row["size"]
    return assignment


def split_manifest(manifest: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Return the ingested rows with a ``subset`` column, and the split report."""
    df = manifest[manifest.status == "ingested"].copy()
    df["group_key"] = group_keys(manifest, cfg.split_near_duplicates)
    rng = np.random.default_rng(cfg.seed)
    # A group with any member in the source's Test split goes to test whole.
    has_source_test = bool((df.split == "test").any())

    groups = (
        df.groupby("group_key")
        .agg(
            label=("label", lambda s: s.mode().sort_values().iloc[0]),
            size=("uri", "size"),
            source_test=("split", lambda s: (s == "test").any()),
        )
        .reset_index()
        .rename(columns={"group_key": "key"})
    )
    if has_source_test:
        assignment = {k: "test" for k in groups.key[groups.source_test]}
        rest = groups[~groups.source_test]
        val = cfg.val_fraction / max(1e-9, 1 - cfg.test_fraction)
        assignment.update(_assign(rest, {"train": 1 - val, "val": val}, rng))
    else:
        fractions = {
            "train": 1 - cfg.val_fraction - cfg.test_fraction,
            "val": cfg.val_fraction,
            "test": cfg.test_fraction,
        }
        if fractions["train"] <= 0:
            raise SplitError("data.val_fraction + data.test_fraction must be below 1")
        assignment = _assign(groups, fractions, rng)
    df["subset"] = df.group_key.map(assignment)

    spanning = df.groupby("group_key").subset.nunique()
    assert (spanning == 1).all(), "a group spans two subsets"
    counts = df.groupby(["subset", "label"]).size().unstack(fill_value=0).reindex(SUBSETS, fill_value=0)
    report = {
        "source_test_split_kept": has_source_test,
        "groups": int(len(groups)),
        "subset_sizes": {s: int((df.subset == s).sum()) for s in SUBSETS},
        "class_counts": {s: {c: int(v) for c, v in counts.loc[s].items()} for s in SUBSETS},
        "groups_spanning_subsets": 0,
        "near_duplicates_grouped": cfg.split_near_duplicates,
    }
    return df.drop(columns=["group_key"]), report


def small_classes(class_counts: dict[str, dict[str, int]], below: int) -> dict[str, dict[str, int]]:
    """class -> {subset: images} for every subset where the class has fewer than ``below``
    images; subsets with no images at all are not checked, ``below`` 0 finds none."""
    small: dict[str, dict[str, int]] = {}
    for subset in SUBSETS:
        counts = class_counts.get(subset, {})
        if below <= 0 or not sum(counts.values()):
            continue
        for label, n in sorted(counts.items()):
            if n < below:
                small.setdefault(label, {})[subset] = n
    return small


def _subset_sizes(subsets: dict[str, int]) -> str:
    """``train 1, val 1, test 0``"""
    return ", ".join(f"{subset} {n}" for subset, n in subsets.items())


def describe_small(small: dict[str, dict[str, int]]) -> str:
    """``seborrheic_keratosis (train 1, val 1, test 0), ...``"""
    return ", ".join(f"{label} ({_subset_sizes(subsets)})" for label, subsets in sorted(small.items()))


def class_size_warnings(report: dict, cfg: DataConfig) -> list[str]:
    """One line per class below ``data.warn_images_per_class_split`` in some subset."""
    small = small_classes(report["class_counts"], cfg.warn_images_per_class_split)
    return [
        f"class {label} has few images after quarantine and split ({_subset_sizes(subsets)}): fewer than "
        f"data.warn_images_per_class_split={cfg.warn_images_per_class_split}, its metrics will be noisy"
        for label, subsets in sorted(small.items())
    ]


def check_class_sizes(report: dict, cfg: DataConfig) -> None:
    """Stop before training when a class is below ``data.min_images_per_class_split``."""
    small = small_classes(report["class_counts"], cfg.min_images_per_class_split)
    if small:
        raise SplitError(
            f"too few images per class after quarantine and split (data.min_images_per_class_split="
            f"{cfg.min_images_per_class_split}): {describe_small(small)}; add images, merge or drop these "
            "classes (data.class_map), or lower the threshold"
        )


def split(manifest_dir: str | Path, cfg: DataConfig, output_dir: str | Path) -> dict:
    """Split the ingested files; the report's ``class_size_warnings`` (also on stderr, which
    the run's console shows) name the classes with few images in a subset."""
    manifest = pd.read_parquet(Path(manifest_dir) / filenames.MANIFEST)
    splits, report = split_manifest(manifest, cfg)
    report["class_size_warnings"] = class_size_warnings(report, cfg)
    for line in report["class_size_warnings"]:
        sys.stderr.write(f"warning: {line}\n")
    sys.stderr.flush()
    check_class_sizes(report, cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits.to_parquet(out / filenames.SPLITS, index=False)
    (out / filenames.SPLIT_REPORT).write_text(json.dumps(report, indent=2))
    return report


def split_step(manifest: dsl.Input[dsl.Dataset], data: dict, splits: dsl.Output[dsl.Dataset]):
    """KFP wrapper: the split step."""
    from components.core import atomic
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.settings import DataConfig
    from components.data.split import split

    with user_errors(), atomic.output_dir(splits.path) as partial:
        report = split(manifest.path, load_section(DataConfig, data, "data."), partial)
    splits.metadata.update(report["subset_sizes"])
