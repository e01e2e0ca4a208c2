"""The ingest data report: report.json (figures), report.html (with thumbnails, a size
histogram and a sample grid per class) and report.md (the same, for KFP's viewer).

Thumbnails are inline base64 JPEGs, so each report is one self-contained file that
MLflow and KFP can show as is. Ingest's merge makes them (preview_jpeg) for the files
the report shows only (shown_uris: a few hundred at most, whatever the source's size),
reading those files again from the source (components.data.ingest.report_previews): a file
that can no longer be read, or whose bytes changed since it was ingested, is shown as
"[no preview]", and the figures are unchanged.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from components.core import filenames
from components.core.html_images import data_uri
from components.data.data_report_pages import render_html, render_markdown

THUMB_SIZE = 72
MAX_GROUPS_SHOWN = 40
SAMPLES_PER_CLASS = 8


# The report's figures that a run's summary.json and MLflow run carry.
SUMMARY_COUNTS = (
    "files_found",
    "ingested",
    "quarantined",
    "ignored",
    "duplicate_groups",
    "label_conflict_groups",
    "split_leak_groups",
    "synthetic",
)


def summary_counts(report: dict) -> dict:
    return {k: report[k] for k in SUMMARY_COUNTS}


class AccountingError(AssertionError):
    """Files were lost or counted twice: a bug, never a data problem."""


def build_report(
    df: pd.DataFrame,
    *,
    source_root: str,
    synthetic: bool,
    fmt: str,
    counts_before: dict,
    duplicate_groups: list[dict],
    near_groups: list[dict],
    label_rows_without_image: int,
) -> dict:
    status = df.status.value_counts()
    ingested = df.loc[df.status == "ingested", ["label", "split"]]  # the columns it needs, not a copy of all
    report = {
        "source": source_root,
        "format": fmt,
        "synthetic": synthetic,
        "files_found": int(len(df)),
        "ingested": int(status.get("ingested", 0)),
        "quarantined": int(status.get("quarantined", 0)),
        "ignored": int(status.get("ignored", 0)),
        "duplicate_groups": len(duplicate_groups),
        "label_conflict_groups": sum(g["label_conflict"] for g in duplicate_groups),
        "split_leak_groups": sum(g["split_leak"] for g in duplicate_groups),
        "near_duplicate_groups": len(near_groups),
        "near_duplicate_label_conflict_groups": sum(g["label_conflict"] for g in near_groups),
        "near_duplicate_split_leak_groups": sum(g["split_leak"] for g in near_groups),
        "label_rows_without_image": int(label_rows_without_image),
        "classes": sorted(ingested.label.unique().tolist()),
        "class_counts_before": {k: int(v) for k, v in counts_before.items()},
        "class_counts": {k: int(v) for k, v in ingested.label.value_counts().sort_index().items()},
        "source_splits": {k or "none": int(v) for k, v in ingested.split.value_counts().sort_index().items()},
        "reason_counts": {
            s: {k: int(v) for k, v in df[df.status == s].reason_code.value_counts().sort_index().items()}
            for s in ("quarantined", "ignored")
        },
        "quarantined_files": df[df.status == "quarantined"][["relpath", "reason_code", "reason"]].to_dict("records"),
        "ignored_files": df[df.status == "ignored"][["relpath", "reason_code", "reason"]].to_dict("records"),
        "duplicate_group_details": duplicate_groups,
        "near_duplicate_group_details": near_groups,
    }
    check_accounting(df, report)
    return report


def check_accounting(df: pd.DataFrame, report: dict) -> None:
    """The invariant, on every run: every file found is in exactly one place, and every
    file not ingested is named with its reason."""
    if report["files_found"] != report["ingested"] + report["quarantined"] + report["ignored"]:
        raise AccountingError(
            f"ingest lost files: {report['files_found']} found, "
            f"{report['ingested']}+{report['quarantined']}+{report['ignored']} accounted for"
        )
    if df.uri.duplicated().any():
        raise AccountingError(f"files listed twice: {df.uri[df.uri.duplicated()].tolist()[:5]}")
    unexplained = df[(df.status != "ingested") & (df.reason == "")]
    if len(unexplained):
        raise AccountingError(f"files set aside without a reason: {unexplained.relpath.tolist()[:5]}")


# ---- pictures ----------------------------------------------------------------


def preview_jpeg(img: Image.Image) -> bytes:
    """The report's thumbnail of a decoded RGB image: a JPEG at most THUMB_SIZE on a side
    (about 1.3 kB). A BOX (area average) resize, about half the time of
    Image.thumbnail's, and no copy of the image."""
    scale = min(1.0, THUMB_SIZE / max(img.size))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # The JPEG encoder itself: the same bytes as save(format="JPEG", quality=80), without
    # save's layers (a fifth of the time at this size).
    return img.resize(size, Image.Resampling.BOX).tobytes("jpeg", "RGB", 80)


def _preview_uri(previews: dict[str, bytes], uri: str) -> str:
    """The inline image of ``uri``'s preview; '' for a file with none (never decoded, or
    not readable again when the report was made)."""
    return data_uri(previews.get(uri, b""), "image/jpeg")


def size_histogram_uri(df: pd.DataFrame) -> str:
    """Widths and heights of the ingested images, as an inline PNG: a 30-bin histogram
    of each, side by side, drawn with Pillow (matplotlib's import alone took longer than
    ingesting a few thousand images)."""
    from PIL import ImageDraw

    ingested = df.loc[df.status == "ingested", ["width", "height"]]
    sizes = [ingested.width.to_numpy(), ingested.height.to_numpy()]
    both = np.concatenate(sizes) if len(ingested) else np.zeros(1)
    low, high = float(both.min()), float(both.max())
    edges = np.linspace(low, high if high > low else low + 1, 31)
    counts = [np.histogram(s, bins=edges)[0] for s in sizes]
    top = max(1, max(int(c.max(initial=0)) for c in counts))
    width, height, left, bottom, right, upper = 480, 208, 50, 30, 10, 22
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    plot_w, plot_h = width - left - right, height - bottom - upper
    bar = plot_w / 30
    colours = [(31, 119, 180), (255, 127, 14)]
    for series, (c, colour) in enumerate(zip(counts, colours)):
        for b, count in enumerate(c):
            if count:
                x0 = left + b * bar + series * bar / 2
                y0 = upper + plot_h * (1 - count / top)
                draw.rectangle([x0, y0, x0 + bar / 2 - 1, upper + plot_h], fill=colour)
    draw.line([(left, upper), (left, upper + plot_h), (left + plot_w, upper + plot_h)], fill="black")
    draw.text((2, upper - 4), str(top), fill="black")
    draw.text((2, upper + plot_h - 10), "0", fill="black")
    draw.text((left, upper + plot_h + 4), f"{low:g}", fill="black")
    draw.text((left + plot_w - 40, upper + plot_h + 4), f"{edges[-1]:g}", fill="black")
    draw.text((left + plot_w / 2 - 40, upper + plot_h + 14), "pixels (images per bin)", fill="black")
    for series, (name, colour) in enumerate(zip(("width", "height"), colours)):
        x = left + 10 + series * 80
        draw.rectangle([x, 6, x + 10, 16], fill=colour)
        draw.text((x + 14, 6), name, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return data_uri(buf.getvalue(), "image/png")


def _shown_groups(report: dict) -> list[tuple[str, list[dict], int]]:
    """(title, the groups shown, how many there are) for the exact-duplicate kinds and
    the near-duplicates."""
    exact = report["duplicate_group_details"]
    sections = [
        ("Label conflicts (identical image, different labels)", [g for g in exact if g["label_conflict"]]),
        (
            "Train/Test leaks (identical image in both)",
            [g for g in exact if g["split_leak"] and not g["label_conflict"]],
        ),
        ("Exact duplicates (same label)", [g for g in exact if not g["split_leak"] and not g["label_conflict"]]),
        ("Near-duplicates (perceptual hash)", report["near_duplicate_group_details"]),
    ]
    return [(title, groups[:MAX_GROUPS_SHOWN], len(groups)) for title, groups in sections]


def _sample_rows(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    ingested = df.loc[df.status == "ingested", ["relpath", "uri", "label"]]
    return {
        label: group.sort_values("relpath").head(SAMPLES_PER_CLASS)
        for label, group in ingested.groupby("label", sort=True)
    }


def shown_uris(df: pd.DataFrame, report: dict) -> set[str]:
    """The URIs of the files whose previews the reports show (a few hundred at most,
    whatever the source's size): the only previews ingest makes."""
    relpaths = {f for _, groups, _ in _shown_groups(report) for g in groups for f in g["files"]}
    uris = set(df.uri[df.relpath.isin(relpaths)])
    for rows in _sample_rows(df).values():
        uris.update(rows.uri)
    return uris


def _group_sections(df: pd.DataFrame, report: dict, previews: dict[str, bytes]) -> list[tuple[str, list[dict]]]:
    """(title, groups) for the exact-duplicate kinds and the near-duplicates, each group
    with its members' rows and thumbnails."""
    by_relpath = df.set_index("relpath")
    shown = []
    for title, groups, total in _shown_groups(report):
        rendered = []
        for group in groups:
            members = by_relpath.loc[group["files"]]
            rendered.append(
                {
                    "files": [
                        {
                            "relpath": relpath,
                            "label": row.label or row.source_label,
                            "split": row.split or "-",
                            "status": row.status,
                            "reason": row.reason,
                            "thumb": _preview_uri(previews, row.uri),
                        }
                        for relpath, row in members.iterrows()
                    ],
                    "total": total,
                }
            )
        shown.append((f"{title}: {total} groups", rendered))
    return shown


def _samples(df: pd.DataFrame, previews: dict[str, bytes]) -> dict[str, list[tuple[str, str]]]:
    return {
        label: [(r.relpath, _preview_uri(previews, r.uri)) for r in rows.itertuples()]
        for label, rows in _sample_rows(df).items()
    }


# ---- rendering ---------------------------------------------------------------


def write_outputs(df: pd.DataFrame, report: dict, output_dir: Path, previews: dict[str, bytes]) -> None:
    """The manifest and the three reports; ``previews`` (preview_jpeg by URI) are the
    thumbnails of the shown files (shown_uris) that have one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(output_dir / filenames.MANIFEST, index=False)
    (output_dir / filenames.INGEST_REPORT).write_text(json.dumps(report, indent=2))
    groups, samples, histogram = _group_sections(df, report, previews), _samples(df, previews), size_histogram_uri(df)
    (output_dir / filenames.INGEST_REPORT_MD).write_text(render_markdown(report, groups, samples, histogram))
    (output_dir / filenames.INGEST_REPORT_HTML).write_text(render_html(report, groups, samples, histogram))
