"""Ingest: list a source, find each file's label, decode every image, and account for
every file found: ingested, quarantined (with the reason) or ignored (with the reason).

Outputs ``manifest.parquet`` (one row per file found), ``report.json``, ``report.md``
and ``report.html`` (see components.data.data_report).

A source that fails (SourceUnavailable) fails the step: only a file's own content or
listing can quarantine it, never a network fault.

On a cluster ingest runs as data.ingest_partitions partition tasks (the KFP step
``ingest_partition``: components.data.ingest.partitions), each decoding every N-th file,
and one merge task (merge_partitions) that finds duplicates across all of them. The
modules: labelling (split, label and group of each file), validation (decode and check),
threads, duplicates (exact and near), partitions (one task's share, saved and loaded).
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from components.core import filenames
from components.core.settings import DataConfig
from components.data.data_report import build_report, preview_jpeg, shown_uris, write_outputs
from components.data.imaging import DecodeBudget, ImageError, decode_rgb_reduced
from components.data.ingest.duplicates import mark_near_duplicates, resolve_duplicates
from components.data.ingest.labelling import IngestError
from components.data.ingest.partitions import IngestPartition, MergedThumbnails, ingest_partition
from components.data.ingest.threads import ingest_threads
from components.data.ingest.validation import DECODE_MIN_SIDE
from components.data.labels import METADATA_COLUMNS
from components.data.sources import read_as_ingested
from components.data.sources.base import SourceError

MANIFEST_COLUMNS = [
    "uri",
    "relpath",
    "label",
    "source_label",
    "group_id",
    "split",
    "md5",
    "phash",
    "width",
    "height",
    "bytes",
    "image_format",
    "status",
    "reason_code",
    "reason",
    "duplicate_of",
    "near_duplicate_group",
    *METADATA_COLUMNS,  # the source's metadata of the image ('' where it has none): components.data.labels
]


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    report: dict


def report_previews(df: pd.DataFrame, uris: set[str], cfg: DataConfig) -> dict[str, bytes]:
    """The report's previews (data_report.preview_jpeg, by URI) of the files of ``uris``
    that ingest decoded: each read again from the source (sources.read_as_ingested) and
    decoded as the partitions decode, so a preview is the one the partition would have
    made. Called with the few hundred files the report shows (shown_uris).

    Never fails the step: a file that can no longer be read, or whose bytes are not the
    ones ingested any more (another md5), gets no preview ("[no preview]" in the report);
    once the source itself fails (SourceError), the reads still running stop retrying and
    the ones not started are not tried."""
    rows = df.loc[df.uri.isin(uris) & (df.phash != ""), ["uri", "md5"]]
    stop = threading.Event()
    budget = DecodeBudget(cfg.decode_memory_mb * 2**20)  # as validation's decodes

    def preview(uri: str, md5: str) -> bytes:
        if stop.is_set():
            return b""
        try:
            data = read_as_ingested(uri, md5, cfg.max_file_bytes, stop)
            return preview_jpeg(decode_rgb_reduced(data, DECODE_MIN_SIDE, cfg.max_image_pixels, budget)[0])
        except SourceError:  # SourceUnavailable too: the source, not this file
            stop.set()
        except (OSError, ImageError):  # FileChanged and FileTooLarge too
            pass
        return b""

    readable = rows.uri.tolist()
    with ThreadPoolExecutor(max_workers=ingest_threads(cfg, readable)) as pool:
        jpegs = list(pool.map(preview, readable, rows.md5.tolist()))
    return {uri: jpeg for uri, jpeg in zip(readable, jpegs) if jpeg}


def merge_partitions(
    partitions: list[IngestPartition], cfg: DataConfig, output_dir: str | Path | None = None, check: bool = True
) -> IngestResult:
    """The whole ingest from its partitions: exact duplicates, label conflicts and
    Train/Test leaks (md5), the per-class cap and near-duplicates (pHash + thumbnail)
    across every partition, then the manifest and reports, the same as one partition over
    the whole listing. Thumbnails stay in the partitions' files: only those of images equal
    or close in pHash are read. The report's previews are made here, for the few hundred
    files it shows only, read again from the source (report_previews). ``check``: refuse
    unusable data here (check_usable); the step checks after its outputs are in place."""
    if not partitions:
        raise IngestError("ingest: no partitions to merge")
    first = partitions[0].meta
    found = sorted(p.meta["partition_index"] for p in partitions)
    if found != list(range(first["num_partitions"])):
        raise IngestError(f"ingest: expected partitions 0..{first['num_partitions'] - 1}, got {found}")
    if len({p.meta["listing_digest"] for p in partitions}) > 1:
        raise IngestError(f"the source {first['source_root']} changed while it was ingested: run again")
    store = MergedThumbnails(partitions, first["files_found"])
    df = pd.concat([p.rows for p in partitions])
    for p in partitions:  # the merge consumes the partitions' rows: one copy of the manifest at a time
        p.rows = p.rows.iloc[:0]
    df = df.sort_index(kind="stable")
    if not np.array_equal(df.index.to_numpy(), np.arange(first["files_found"])):
        raise IngestError("ingest: the partitions do not cover the listing once")
    df.loc[df.status == "", "status"] = "ingested"
    duplicate_groups = resolve_duplicates(df, cfg.label_conflict_policy, cfg.split_leak_policy)
    _cap_per_class(df, cfg.max_images_per_class, cfg.seed)
    near_groups = mark_near_duplicates(df, store, cfg)
    df = df[MANIFEST_COLUMNS].astype({"width": int, "height": int, "bytes": int}).reset_index(drop=True)

    report = build_report(
        df,
        source_root=first["source_root"],
        synthetic=first["synthetic"],
        fmt=first["format"],
        counts_before=first["counts_before"],
        duplicate_groups=duplicate_groups,
        near_groups=near_groups,
        label_rows_without_image=first["label_rows_without_image"],
    )
    if output_dir is not None:
        # Written first: when the data is unusable, the per-file reasons are what the user reads.
        write_outputs(df, report, Path(output_dir), report_previews(df, shown_uris(df, report), cfg))
    if check:
        check_usable(report, cfg, Path(output_dir) / filenames.INGEST_REPORT_HTML if output_dir is not None else None)
    return IngestResult(df, report)


def ingest(source_uri: str, cfg: DataConfig, output_dir: str | Path | None = None) -> IngestResult:
    """Ingest ``source_uri`` (empty: the synthetic set) in this process, as one partition;
    write the outputs to ``output_dir``."""
    return merge_partitions([ingest_partition(source_uri, cfg)], cfg, output_dir)


def _cap_per_class(df: pd.DataFrame, cap: int, seed: int) -> None:
    if cap <= 0:
        return
    for _, group in df[df.status == "ingested"].groupby("label"):
        if len(group) > cap:
            dropped = group.sample(len(group) - cap, random_state=seed).index
            df.loc[dropped, ["status", "reason_code", "reason"]] = [
                "ignored",
                "over_cap",
                f"over data.max_images_per_class={cap}",
            ]


def check_usable(report: dict, cfg: DataConfig, report_path: Path | None = None) -> None:
    """Enough usable images to train on, or one line saying why and where the report with
    every file's reason is (``report_path``, written before this check)."""
    where = f"; every file's reason: {report_path}" if report_path is not None else ""
    if report["ingested"] == 0:
        reasons = report["reason_counts"]["quarantined"]
        hint = f" (most common quarantine reason: {max(reasons, key=reasons.get)})" if reasons else ""
        raise IngestError(f"no usable images in {report['source']}: {report['files_found']} files found{hint}{where}")
    if len(report["classes"]) < 2:
        raise IngestError(f"only one class found ({report['classes'][0]}): a classifier needs at least two{where}")
    small = {c: n for c, n in report["class_counts"].items() if n < cfg.min_images_per_class}
    if small:
        raise IngestError(
            f"classes with fewer than data.min_images_per_class={cfg.min_images_per_class} images: "
            + ", ".join(f"{c} ({n})" for c, n in sorted(small.items()))
            + where
        )


def ingest_partition_step(
    data_uri: str, data: dict, partition_index: int, partition: dsl.Output[dsl.Dataset], source_listing: str = ""
):
    """KFP wrapper: ingest partition ``partition_index`` of ``data.ingest_partitions`` (a
    "shard" is a TFRecord file of normalize's: data.num_shards). ``source_listing`` (a
    digest of the source's file list) is not read: it is there so that KFP's cache key
    changes whenever the source does."""
    from components.core import atomic
    from components.core.errors import user_errors
    from components.core.settings import DataConfig, load_section
    from components.data.ingest.partitions import ingest_partition, save_partition

    with user_errors(), atomic.output_dir(partition.path) as partial:
        cfg = load_section(DataConfig, data, "data.")
        save_partition(ingest_partition(data_uri, cfg, partition_index, cfg.ingest_partitions, partial), partial)


def ingest_merge_step(
    partitions: dsl.Input[list[dsl.Dataset]],
    data: dict,
    manifest: dsl.Output[dsl.Dataset],
    report_md: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
):
    """KFP wrapper: the partition tasks' outputs as one manifest and report. The report's
    previews are made from the files it shows, read again by their manifest URIs (no
    source URI needed); ``data`` gives the read and decode limits and the threads."""
    import shutil
    from pathlib import Path

    from components.core import atomic, filenames
    from components.core.errors import user_errors
    from components.core.settings import DataConfig, load_section
    from components.data.ingest import check_usable, merge_partitions
    from components.data.ingest.partitions import load_partition

    with user_errors():
        cfg = load_section(DataConfig, data, "data.")
        with atomic.output_dir(manifest.path) as partial:
            result = merge_partitions([load_partition(p.path) for p in partitions], cfg, partial, check=False)
        out = Path(manifest.path)
        shutil.copyfile(out / filenames.INGEST_REPORT_MD, report_md.path)
        shutil.copyfile(out / filenames.INGEST_REPORT_HTML, report_html.path)
        # After the outputs are in place: when the data is unusable, its report is what the user reads.
        check_usable(result.report, cfg, out / filenames.INGEST_REPORT_HTML)
    manifest.metadata.update({k: result.report[k] for k in ("files_found", "ingested", "quarantined", "ignored")})
