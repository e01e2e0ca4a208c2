"""Split: ingested files -> train / val / test.

Grouped so that no lesion (or patient, or identical-content group) spans two subsets,
and stable as data grows: a group's subset is a function of its own keys and the seed
alone, never of the other groups, so adding, removing or editing other images never
moves an existing lesion (docs/data.md, "How the split holds as data grows").

Each unit (a lesion/patient id; an image's md5 where the source has no id) gets a keyed
hash in [0, 1), compared with the cumulative fractions train | val | test: the same
fractions for every class, so each class is stratified in expectation. A group of several
units (a shared image, near-duplicates) takes the highest of its units' subsets, test
over val over train: a group that held test images keeps them held out. The source's own
Test split is kept: a group with any image in it goes to test whole. The one exception:
a class left with no group in some subset gets its group nearest to that subset in hash
order moved there (``groups_placed_by_minimum`` in the report), which can move again when
that class grows.
"""

import hashlib
import json
import sys
from pathlib import Path

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


def unit_key(group_id: str, md5: str) -> str:
    """What a file's place is drawn for: its lesion/patient id, else its content."""
    return f"group:{group_id}" if group_id else f"md5:{md5}"


def unit_hash(key: str, seed: int) -> float:
    """A keyed hash of ``key`` in [0, 1): the same for a key and seed on every run."""
    digest = hashlib.blake2b(key.encode(), key=str(seed).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def subset_of(u: float, fractions: dict[str, float]) -> str:
    """The subset whose interval of the cumulative ``fractions`` (in SUBSETS order) holds ``u``."""
    edge = 0.0
    names = [s for s in SUBSETS if fractions.get(s, 0) > 0]
    for name in names:
        edge += fractions[name]
        if u < edge:
            return name
    return names[-1]


def _linked_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[(manifest.status == "ingested") | manifest.reason_code.isin(LINKING_REASONS)]


def group_keys(manifest: pd.DataFrame, link_near_duplicates: bool) -> pd.Series:
    """One key per linked row (ingested, or a copy ingest set aside as a duplicate): rows
    that share a lesion/patient id, identical content or (optionally) a near-duplicate
    group share a key.

    Copies that ingest set aside as duplicates still link their lesion id to the kept
    copy's, so two lesion ids that share an image stay on one side.
    """
    linked = _linked_rows(manifest)
    sets = UnionFind()
    near = linked.near_duplicate_group if link_near_duplicates else pd.Series("", index=linked.index)
    for uri, gid, md5, near_group in zip(linked.uri, linked.group_id, linked.md5, near):
        node = f"file:{uri}"
        for key, prefix in ((gid, "group"), (md5, "md5"), (near_group, "near")):
            if key:
                sets.union(node, f"{prefix}:{key}")
    return pd.Series([sets.find(f"file:{u}") for u in linked.uri], index=linked.index)


def _interval(name: str, fractions: dict[str, float]) -> tuple[float, float]:
    names = [s for s in SUBSETS if fractions.get(s, 0) > 0]
    start = sum(fractions[s] for s in names[: names.index(name)])
    return start, start + fractions[name]


def _distance(u: float, interval: tuple[float, float]) -> float:
    low, high = interval
    return max(low - u, u - high, 0.0)


def _place_minimum(groups: pd.DataFrame, fractions: dict[str, float]) -> list[str]:
    """Give every class a group in every subset of ``fractions``: for a subset a class has
    none in, its group nearest to that subset in hash order moves there, taken from a subset
    with two or more of that class's groups. Returns the keys it moved."""
    names = [s for s in SUBSETS if fractions.get(s, 0) > 0]
    moved: list[str] = []
    for label, members in groups.groupby("label", sort=True):
        if len(members) < len(names):
            raise SplitError(
                f"class {label!r} has {len(members)} independent groups (lesions/patients/images); "
                f"splitting it into {'/'.join(names)} needs at least {len(names)}"
            )
        for name in names:
            counts = groups.loc[members.index, "subset"].value_counts()
            if counts.get(name, 0):
                continue
            spare = members[groups.loc[members.index, "subset"].map(counts) > 1]
            nearest = min(spare.itertuples(), key=lambda g: (_distance(g.u, _interval(name, fractions)), g.key))
            groups.loc[nearest.Index, "subset"] = name
            moved.append(nearest.name)
    return moved


def _groups(df: pd.DataFrame, linked: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One row per group: key, label (its images' most common), size, whether it has
    source-Test images, u: the highest keyed hash of its units (a merged group goes where
    its highest unit would: test over val over train), and name: its smallest unit key."""
    keys = [unit_key(g, m) for g, m in zip(linked.group_id, linked.md5)]
    units = linked.assign(unit=keys, u=[unit_hash(k, seed) for k in keys])
    return (
        df.groupby("group_key")
        .agg(
            label=("label", lambda s: s.mode().sort_values().iloc[0]),
            size=("uri", "size"),
            source_test=("split", lambda s: (s == "test").any()),
        )
        .join(units.groupby("group_key").agg(u=("u", "max"), name=("unit", "min")))
        .reset_index()
        .rename(columns={"group_key": "key"})
    )


def split_manifest(manifest: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Return the ingested rows with a ``subset`` column, and the split report."""
    linked = _linked_rows(manifest).assign(group_key=group_keys(manifest, cfg.split_near_duplicates))
    df = linked[linked.status == "ingested"].copy()
    groups = _groups(df, linked, cfg.seed)
    # A group with any member in the source's Test split goes to test whole.
    has_source_test = bool(groups.source_test.any())
    if has_source_test:
        val = cfg.val_fraction / max(1e-9, 1 - cfg.test_fraction)
        fractions = {"train": 1 - val, "val": val}
    else:
        fractions = {"train": 1 - cfg.val_fraction - cfg.test_fraction, "val": cfg.val_fraction}
        fractions["test"] = cfg.test_fraction
        if fractions["train"] <= 0:
            raise SplitError("data.val_fraction + data.test_fraction must be below 1")
    groups["subset"] = [subset_of(u, fractions) for u in groups.u]
    groups.loc[groups.source_test, "subset"] = "test"
    hashed = groups[~groups.source_test].copy()
    moved = _place_minimum(hashed, fractions)
    groups.loc[hashed.index, "subset"] = hashed.subset
    df["subset"] = df.group_key.map(groups.set_index("key").subset)

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
        "assignment": "keyed hash of each group's units and data.seed (stable as data grows)",
        "groups_placed_by_minimum": sorted(moved),
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
