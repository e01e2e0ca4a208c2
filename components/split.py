"""Split: ingested files -> train / val / test.

Stratified by class, grouped so that no lesion (or patient, or identical-content
group) spans two subsets, deterministic for a seed. A Test split that the source
already has is kept as the test subset.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from components.errors import UserError
from pipeline.config import DataConfig

SUBSETS = ("train", "val", "test")


class SplitError(UserError):
    """The requested split cannot be made from this data: one line for the user."""


def group_keys(df: pd.DataFrame) -> pd.Series:
    """One key per row: rows sharing a lesion/patient id or identical content share a key."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for gid, md5, uri in zip(df.group_id, df.md5, df.uri):
        node = f"file:{uri}"
        if gid:
            union(node, f"group:{gid}")
        if md5:
            union(node, f"md5:{md5}")
    return pd.Series([find(f"file:{u}") for u in df.uri], index=df.index)


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
                f"splitting it into {'/'.join(names)} needs at least {len(names)}")
        order = members.assign(tiebreak=rng.permutation(len(members))).sort_values(["size", "tiebreak"], ascending=[False, True])
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
    df["group_key"] = group_keys(df)
    rng = np.random.default_rng(cfg.seed)
    # A group with any member in the source's Test split goes to test whole.
    in_source_test = df.groupby("group_key").split.transform(lambda s: (s == "test").any())
    has_source_test = bool(in_source_test.any())

    groups = (df.groupby("group_key")
              .agg(label=("label", lambda s: s.mode().sort_values().iloc[0]), size=("uri", "size"),
                   source_test=("split", lambda s: (s == "test").any()))
              .reset_index().rename(columns={"group_key": "key"}))
    if has_source_test:
        assignment = {k: "test" for k in groups.key[groups.source_test]}
        rest = groups[~groups.source_test]
        val = cfg.val_fraction / max(1e-9, 1 - cfg.test_fraction)
        assignment.update(_assign(rest, {"train": 1 - val, "val": val}, rng))
    else:
        fractions = {"train": 1 - cfg.val_fraction - cfg.test_fraction, "val": cfg.val_fraction, "test": cfg.test_fraction}
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
    }
    return df.drop(columns=["group_key"]), report


def split(manifest_dir: str | Path, cfg: DataConfig, output_dir: str | Path) -> dict:
    manifest = pd.read_parquet(Path(manifest_dir) / "manifest.parquet")
    splits, report = split_manifest(manifest, cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits.to_parquet(out / "splits.parquet", index=False)
    (out / "split_report.json").write_text(json.dumps(report, indent=2))
    return report


def split_step(manifest: dsl.Input[dsl.Dataset], config: dict, splits: dsl.Output[dsl.Dataset]):
    """KFP wrapper: the split step."""
    from components import atomic
    from components.errors import user_errors
    from components.split import split
    from pipeline.config import Config

    with user_errors(), atomic.output_dir(splits.path) as partial:
        report = split(manifest.path, Config.from_dict(config).data, partial)
    splits.metadata.update(report["subset_sizes"])
