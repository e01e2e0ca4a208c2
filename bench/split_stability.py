"""How the split (components.data.split) holds as data grows, on real sources: ingest once,
split the source with ~10 % of its lesions (groups) held back, then the whole source, and
count the first run's groups that changed subset (the split promises 0); with each
subset's per-class share of images and groups against its target. Prints JSON.

    python bench/split_stability.py --data ../shared/data --cache bench/results/split-cache [--grow 0.1]

Each source is split with its shipped config's data section (configs/<name>.yaml);
ingest's manifest is kept in --cache, so a second run only splits. Held-back groups are
drawn by a keyed hash of their smallest unit key (not by the split's seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from components.core import filenames
from components.data.ingest import ingest
from components.data.split import SUBSETS, group_keys, split_manifest, unit_hash, unit_key
from pipeline.config import RunConfig

SOURCES = {"ham10000": "configs/ham10000.yaml", "isic9": "configs/isic9.yaml"}


def ingested_manifest(source: Path, cfg, cache: Path) -> pd.DataFrame:
    path = cache / source.name / filenames.MANIFEST
    if not path.is_file():
        ingest(str(source), cfg, path.parent)
    return pd.read_parquet(path)


def held_back(manifest: pd.DataFrame, cfg, grow: float) -> pd.Series:
    """True for the linked rows of the groups the first run does not have yet: ~``grow``
    more groups in the second run than in the first."""
    keys = group_keys(manifest, cfg.split_near_duplicates)
    linked = manifest.loc[keys.index]
    names = pd.Series([unit_key(g, m) for g, m in zip(linked.group_id, linked.md5)], index=keys.index)
    name_of_group = names.groupby(keys).min()
    drawn = name_of_group.map(lambda n: unit_hash(n, seed=-1) < grow / (1 + grow))
    return keys.map(drawn).reindex(manifest.index, fill_value=False)


def shares(df: pd.DataFrame, fractions: dict[str, float]) -> dict:
    """Per class: each subset's share of its images (target: its fraction) and its groups."""
    out = {}
    for label, rows in df.groupby("label"):
        out[label] = {
            subset: {
                "share": round(float((rows.subset == subset).mean()), 3),
                "target": fractions.get(subset),
                "images": int((rows.subset == subset).sum()),
                "groups": int(rows[rows.subset == subset].group_key.nunique()),
            }
            for subset in SUBSETS
        }
    return out


def measure(name: str, data_root: Path, cache: Path, grow: float) -> dict:
    cfg = RunConfig.load(SOURCES[name]).data
    manifest = ingested_manifest(data_root / name, cfg, cache)
    later = held_back(manifest, cfg, grow)
    started = time.perf_counter()
    first, first_report = split_manifest(manifest[~later], cfg)
    second, second_report = split_manifest(manifest, cfg)
    seconds = time.perf_counter() - started
    keys = group_keys(manifest, cfg.split_near_duplicates)
    both = first[["uri", "subset"]].merge(second[["uri", "subset"]], on="uri", suffixes=("_first", "_second"))
    both["group"] = both.uri.map(dict(zip(manifest.loc[keys.index].uri, keys)))
    moved = both[both.subset_first != both.subset_second]
    second = second.assign(group_key=second.uri.map(dict(zip(manifest.loc[keys.index].uri, keys))))
    source_test = second_report["source_test_split_kept"]
    val_of_rest = cfg.val_fraction / max(1e-9, 1 - cfg.test_fraction)
    fractions = (
        {"train": 1 - val_of_rest, "val": val_of_rest}
        if source_test
        else {"train": 1 - cfg.val_fraction - cfg.test_fraction, "val": cfg.val_fraction, "test": cfg.test_fraction}
    )
    return {
        "source": name,
        "groups_first": first_report["groups"],
        "groups_second": second_report["groups"],
        "images_first": len(first),
        "images_second": len(second),
        "first_groups_that_changed_subset": int(moved.group.nunique()),
        "first_images_that_changed_subset": len(moved),
        "groups_placed_by_minimum": {
            "first": first_report["groups_placed_by_minimum"],
            "second": second_report["groups_placed_by_minimum"],
        },
        "source_test_split_kept": source_test,
        "targets": fractions,
        "shares_second": shares(second, fractions),
        "split_seconds_both": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding ham10000/ and isic9/")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/split-cache"))
    parser.add_argument("--grow", type=float, default=0.1, help="the second run's extra groups, as a fraction")
    parser.add_argument("--sources", nargs="*", default=list(SOURCES))
    args = parser.parse_args()
    print(json.dumps([measure(s, args.data, args.cache, args.grow) for s in args.sources], indent=2))


if __name__ == "__main__":
    main()
