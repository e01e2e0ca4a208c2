"""Ingest: list a source, find each file's label, decode every image, and account for
every file found: ingested, quarantined (with the reason) or ignored (with the reason).

Outputs ``manifest.parquet`` (one row per file found), ``report.json``, ``report.md``
and ``report.html``.
"""

import hashlib
import html
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
from kfp import dsl

from components.errors import UserError
from components.imaging import ImageError, decode_rgb
from components.labels import canonical_label
from components.sources import Source, SourceError, SourceFile, open_source
from pipeline.config import DataConfig

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
SPLIT_DIRS = {"train": "train", "test": "test"}
MANIFEST_COLUMNS = [
    "uri", "relpath", "label", "source_label", "group_id", "split", "md5",
    "width", "height", "status", "reason",
]


class IngestError(UserError):
    """The data is not usable for training: one line for the user."""


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    report: dict


# ---- labelling ---------------------------------------------------------------


def detect_format(files: list[SourceFile], requested: str = "auto") -> str:
    """``folders`` (class subfolders, optional Train/Test) or ``ham10000`` (CSV + images)."""
    if requested != "auto":
        if requested not in ("folders", "ham10000"):
            raise IngestError(f"unknown data format {requested!r} (folders, ham10000)")
        return requested
    if any(PurePosixPath(f.relpath).name.lower() == "ham10000_metadata.csv" for f in files):
        return "ham10000"
    return "folders"


def _is_image_name(relpath: str) -> bool:
    return PurePosixPath(relpath).suffix.lower() in IMAGE_EXTENSIONS


def _label_folders(files: list[SourceFile], class_map: dict[str, str]) -> pd.DataFrame:
    rows = []
    for f in files:
        parts = PurePosixPath(f.relpath).parts
        split = ""
        if len(parts) >= 3 and parts[0].lower() in SPLIT_DIRS:
            split, parts = SPLIT_DIRS[parts[0].lower()], parts[1:]
        row = {"uri": f.uri, "relpath": f.relpath, "split": split, "group_id": "", "source_label": ""}
        if not _is_image_name(f.relpath):
            row.update(status="ignored", reason=f"not an image file ({PurePosixPath(f.relpath).name})")
        elif len(parts) < 2:
            row.update(status="quarantined", reason="image outside any class folder: no label")
        else:
            row["source_label"] = parts[0]
            row["label"] = canonical_label(parts[0], class_map)
        rows.append(row)
    return pd.DataFrame(rows)


def _label_ham10000(files: list[SourceFile], source: Source, class_map: dict[str, str]) -> pd.DataFrame:
    csv_file = next(f for f in files if PurePosixPath(f.relpath).name.lower() == "ham10000_metadata.csv")
    try:
        meta = pd.read_csv(io.BytesIO(source.read_bytes(csv_file.uri)), dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise IngestError(f"{csv_file.relpath} is not a readable CSV: {exc}") from None
    missing = {"image_id", "dx", "lesion_id"} - set(meta.columns)
    if missing:
        raise IngestError(f"{csv_file.relpath} lacks columns {sorted(missing)}")
    by_id = meta.drop_duplicates("image_id").set_index("image_id")
    rows = []
    for f in files:
        row = {"uri": f.uri, "relpath": f.relpath, "split": "", "group_id": "", "source_label": ""}
        stem = PurePosixPath(f.relpath).stem
        if f is csv_file:
            row.update(status="ignored", reason="label file")
        elif not _is_image_name(f.relpath):
            row.update(status="ignored", reason=f"not an image file ({PurePosixPath(f.relpath).name})")
        elif stem not in by_id.index:
            row.update(status="quarantined", reason="no row in the metadata CSV: no label")
        else:
            entry = by_id.loc[stem]
            row["source_label"] = "" if pd.isna(entry["dx"]) else entry["dx"]
            row["label"] = canonical_label(entry["dx"], class_map)
            row["group_id"] = "" if pd.isna(entry["lesion_id"]) else entry["lesion_id"]
        rows.append(row)
    return pd.DataFrame(rows)


# ---- validation --------------------------------------------------------------


def _inspect(source: Source, uri: str) -> dict:
    """md5, size and decode status of one file; never raises for a bad image."""
    try:
        data = source.read_bytes(uri)
    except OSError as exc:
        return {"md5": "", "width": 0, "height": 0, "error": f"unreadable: {exc.strerror or exc}"}
    md5 = hashlib.md5(data).hexdigest()
    try:
        img = decode_rgb(data)
    except ImageError as exc:
        return {"md5": md5, "width": 0, "height": 0, "error": str(exc)}
    return {"md5": md5, "width": img.width, "height": img.height, "error": ""}


def _mark_duplicates(df: pd.DataFrame) -> dict:
    """Exact-content groups among ingested files.

    Same label: keep one (the Test copy when there is one), ignore the rest.
    Different labels: a label conflict, the whole group is quarantined.
    """
    ok = df[df.status == "ingested"]
    groups = [g for _, g in ok.groupby("md5") if len(g) > 1]
    conflicts = leaks = 0
    for group in groups:
        labels = set(group.label)
        if len(labels) > 1:
            conflicts += 1
            df.loc[group.index, ["status", "reason"]] = [
                "quarantined", f"label conflict: identical image filed as {', '.join(sorted(labels))}"]
            continue
        splits = set(group.split)
        if {"train", "test"} <= splits:
            leaks += 1
        ordered = group.assign(not_test=group.split != "test").sort_values(["not_test", "relpath"])
        keep = ordered.index[0]
        for idx in ordered.index[1:]:
            df.loc[idx, ["status", "reason"]] = ["ignored", f"exact duplicate of {df.at[keep, 'relpath']}"]
    return {"duplicate_groups": len(groups), "label_conflict_groups": conflicts, "split_leak_groups": leaks}


def _cap_per_class(df: pd.DataFrame, cap: int, seed: int) -> None:
    if cap <= 0:
        return
    for label, group in df[df.status == "ingested"].groupby("label"):
        if len(group) > cap:
            dropped = group.sample(len(group) - cap, random_state=seed).index
            df.loc[dropped, ["status", "reason"]] = ["ignored", f"over data.max_images_per_class={cap}"]


def ingest(source_uri: str, cfg: DataConfig, output_dir: str | Path | None = None) -> IngestResult:
    """Ingest ``source_uri`` (empty: the synthetic set); write the outputs to ``output_dir``."""
    source = open_source(
        source_uri, synthetic_images_per_class=cfg.synthetic_images_per_class,
        synthetic_size=cfg.synthetic_image_size, seed=cfg.seed)
    files = source.list_files()
    if not files:
        raise IngestError(f"no files found in {source.root}")
    fmt = "folders" if source.synthetic else detect_format(files, cfg.format)
    if fmt == "ham10000":
        df = _label_ham10000(files, source, cfg.class_map)
    else:
        df = _label_folders(files, cfg.class_map)
    for column in ("label", "status", "reason"):
        if column not in df:
            df[column] = None
    df["status"] = df["status"].fillna("")
    df["reason"] = df["reason"].fillna("")

    candidates = df.index[df.status == ""]
    with ThreadPoolExecutor(max_workers=8) as pool:
        inspected = list(pool.map(lambda uri: _inspect(source, uri), df.loc[candidates, "uri"]))
    info = pd.DataFrame(inspected, index=candidates)
    df["md5"], df["width"], df["height"] = "", 0, 0
    df.loc[candidates, ["md5", "width", "height"]] = info[["md5", "width", "height"]]
    bad = info.index[info.error != ""]
    df.loc[bad, "status"] = "quarantined"
    df.loc[bad, "reason"] = info.loc[bad, "error"]
    unlabeled = df.index[(df.status == "") & df.label.isna()]
    df.loc[unlabeled, ["status", "reason"]] = ["quarantined", "unknown or missing label"]
    too_small = df.index[(df.status == "") & ((df.width < 8) | (df.height < 8))]
    df.loc[too_small, ["status", "reason"]] = ["quarantined", "image smaller than 8x8 pixels"]
    counts_before = df[df.status == ""].label.value_counts().sort_index().to_dict()
    df.loc[df.status == "", "status"] = "ingested"

    dup_stats = _mark_duplicates(df)
    _cap_per_class(df, cfg.max_images_per_class, cfg.seed)
    df["label"] = df["label"].fillna("")
    df["width"] = df["width"].astype(int)
    df["height"] = df["height"].astype(int)
    df = df[MANIFEST_COLUMNS]

    report = build_report(df, source, fmt, counts_before, dup_stats)
    check_usable(report, cfg)
    if output_dir is not None:
        write_outputs(df, report, Path(output_dir))
    return IngestResult(df, report)


def build_report(df: pd.DataFrame, source: Source, fmt: str, counts_before: dict, dup_stats: dict) -> dict:
    status = df.status.value_counts()
    ingested = df[df.status == "ingested"]
    report = {
        "source": source.root,
        "format": fmt,
        "synthetic": source.synthetic,
        "files_found": int(len(df)),
        "ingested": int(status.get("ingested", 0)),
        "quarantined": int(status.get("quarantined", 0)),
        "ignored": int(status.get("ignored", 0)),
        **dup_stats,
        "classes": sorted(ingested.label.unique().tolist()),
        "class_counts_before": {k: int(v) for k, v in counts_before.items()},
        "class_counts": {k: int(v) for k, v in ingested.label.value_counts().sort_index().items()},
        "source_splits": {k or "none": int(v) for k, v in ingested.split.value_counts().sort_index().items()},
        "quarantined_files": df[df.status == "quarantined"][["relpath", "reason"]].to_dict("records"),
        "ignored_files": df[df.status == "ignored"][["relpath", "reason"]].to_dict("records"),
    }
    # The accounting invariant: every file found ends in exactly one place.
    if report["files_found"] != report["ingested"] + report["quarantined"] + report["ignored"]:
        raise AssertionError(f"ingest lost files: {report}")
    return report


def check_usable(report: dict, cfg: DataConfig) -> None:
    if report["ingested"] == 0:
        reasons = pd.Series([q["reason"] for q in report["quarantined_files"]]).value_counts()
        hint = f" (most common quarantine reason: {reasons.index[0]})" if len(reasons) else ""
        raise IngestError(f"no usable images in {report['source']}: {report['files_found']} files found{hint}")
    if len(report["classes"]) < 2:
        raise IngestError(f"only one class found ({report['classes'][0]}): a classifier needs at least two")
    small = {c: n for c, n in report["class_counts"].items() if n < cfg.min_images_per_class}
    if small:
        raise IngestError(
            f"classes with fewer than data.min_images_per_class={cfg.min_images_per_class} images: "
            + ", ".join(f"{c} ({n})" for c, n in sorted(small.items())))


def render_markdown(report: dict) -> str:
    lines = [
        "# Data report" + (" (SYNTHETIC data)" if report["synthetic"] else ""),
        f"Source `{report['source']}` ({report['format']}).",
        "",
        f"Files found **{report['files_found']}** = ingested **{report['ingested']}** + "
        f"quarantined **{report['quarantined']}** + ignored **{report['ignored']}**.",
        f"Duplicate groups {report['duplicate_groups']}, label conflicts {report['label_conflict_groups']}, "
        f"train/test leaks {report['split_leak_groups']}.",
        "",
        "| class | before validation | ingested |",
        "|---|---:|---:|",
    ]
    for cls in sorted(set(report["class_counts_before"]) | set(report["class_counts"])):
        lines.append(f"| {cls} | {report['class_counts_before'].get(cls, 0)} | {report['class_counts'].get(cls, 0)} |")
    for title, key in (("Quarantined", "quarantined_files"), ("Ignored", "ignored_files")):
        if report[key]:
            lines += ["", f"## {title} files", "", "| file | reason |", "|---|---|"]
            lines += [f"| `{r['relpath']}` | {r['reason']} |" for r in report[key]]
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    def table(rows: list[dict]) -> str:
        body = "".join(f"<tr><td><code>{html.escape(r['relpath'])}</code></td><td>{html.escape(r['reason'])}</td></tr>" for r in rows)
        return f"<table><tr><th>file</th><th>reason</th></tr>{body}</table>"

    counts = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{report['class_counts_before'].get(c, 0)}</td><td>{report['class_counts'].get(c, 0)}</td></tr>"
        for c in sorted(set(report["class_counts_before"]) | set(report["class_counts"])))
    synthetic = "<p><strong>SYNTHETIC data: not medical images.</strong></p>" if report["synthetic"] else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Data report</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}</style>"
        f"</head><body><h1>Data report</h1>{synthetic}<p>Source <code>{html.escape(report['source'])}</code> ({report['format']})</p>"
        f"<p>files found {report['files_found']} = ingested {report['ingested']} + quarantined {report['quarantined']}"
        f" + ignored {report['ignored']}</p>"
        f"<table><tr><th>class</th><th>before validation</th><th>ingested</th></tr>{counts}</table>"
        f"<h2>Quarantined files</h2>{table(report['quarantined_files'])}"
        f"<h2>Ignored files</h2>{table(report['ignored_files'])}</body></html>")


def write_outputs(df: pd.DataFrame, report: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(output_dir / "manifest.parquet", index=False)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    (output_dir / "report.md").write_text(render_markdown(report))
    (output_dir / "report.html").write_text(render_html(report))


def ingest_step(data_uri: str, config: dict, manifest: dsl.Output[dsl.Dataset],
                report_md: dsl.Output[dsl.Markdown], report_html: dsl.Output[dsl.HTML], source_listing: str = ""):
    """KFP wrapper: the ingest step. ``source_listing`` (a digest of the source's file list) is
    not read: it is there so that KFP's cache key changes whenever the source does."""
    import shutil
    from pathlib import Path

    from components import atomic
    from components.errors import user_errors
    from components.ingest import ingest
    from pipeline.config import Config

    with user_errors(), atomic.output_dir(manifest.path) as partial:
        result = ingest(data_uri, Config.from_dict(config).data, partial)
    out = Path(manifest.path)
    shutil.copyfile(out / "report.md", report_md.path)
    shutil.copyfile(out / "report.html", report_html.path)
    manifest.metadata.update({k: result.report[k] for k in ("files_found", "ingested", "quarantined", "ignored")})
