"""Plot bench/scale.py's JSON lines: seconds and peak memory of each step against the
number of images, log-log, with a dotted line of slope 1 (linear growth) for reference.

    nice python bench/scale.py --sizes 10000,30000,100000 | tee bench/results/scale.jsonl
    python bench/plot_scale.py bench/results/scale.jsonl -o docs/scale.png [--title "..."]

Lines that are not JSON objects with ``images``, ``step``, ``seconds`` and
``peak_rss_mb`` (the ``generate`` and ``planted`` lines, log text) are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

STEP_ORDER = ("ingest", "split", "normalize", "augment", "train")


def read_points(lines) -> dict[str, list[tuple[int, float, float]]]:
    """(images, seconds, peak_rss_mb) per step, sorted by images; a size measured twice
    keeps its last line."""
    points: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step") in STEP_ORDER and {"images", "seconds", "peak_rss_mb"} <= row.keys():
            points[row["step"]][int(row["images"])] = (float(row["seconds"]), float(row["peak_rss_mb"]))
    return {step: [(n, *points[step][n]) for n in sorted(points[step])] for step in STEP_ORDER if step in points}


def plot(points: dict[str, list[tuple[int, float, float]]], out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    sizes = sorted({n for rows in points.values() for n, _, _ in rows})
    for step, rows in points.items():
        n = [r[0] for r in rows]
        time_ax.plot(n, [r[1] for r in rows], marker="o", label=step)
        memory_ax.plot(n, [r[2] for r in rows], marker="o", label=step)
    if len(sizes) > 1:  # slope 1 through the smallest size's slowest step: linear growth
        slowest = max(rows[0][1] for rows in points.values() if rows[0][0] == sizes[0])
        time_ax.plot(
            [sizes[0], sizes[-1]],
            [slowest, slowest * sizes[-1] / sizes[0]],
            ":",
            color="grey",
            label="linear (slope 1)",
        )
    for ax, ylabel in ((time_ax, "seconds"), (memory_ax, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("images")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    time_ax.set_title("time per step")
    memory_ax.set_title("peak memory per step (own process)")
    time_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", nargs="?", default="-", help="bench/scale.py's output (default: stdin)")
    parser.add_argument("-o", "--out", default="docs/scale.png", help="the PNG to write")
    parser.add_argument("--title", default="", help="a line above the plots (e.g. the commit measured)")
    args = parser.parse_args()
    lines = sys.stdin if args.jsonl == "-" else Path(args.jsonl).read_text().splitlines()
    points = read_points(lines)
    if not points:
        raise SystemExit(f"no step lines in {args.jsonl}")
    plot(points, Path(args.out), args.title)
    print(
        json.dumps(
            {"png": args.out, "steps": list(points), "sizes": sorted({r[0] for v in points.values() for r in v})}
        )
    )


if __name__ == "__main__":
    main()
