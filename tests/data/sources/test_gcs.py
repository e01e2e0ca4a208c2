"""gs:// sources on the real gcp-storage-emulator: a prefix listed and read, objects over the
size limit quarantined unread, errors as one line. A source that fails must fail ingest, in
one line and within a bounded time, and never quarantine the files it could not read: the
emulator behind a FaultProxy that breaks the way networks do (refused, reset, no answer,
503, 429), which gcs.py's retries and deadline meet."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from components.core.settings import DataConfig
from components.data import sources
from components.data.ingest import IngestError, ingest, merge_partitions
from components.data.ingest.partitions import ingest_partition
from components.data.sources import gcs, read_bytes
from components.data.sources.base import FileTooLarge, SourceError, SourceUnavailable
from pipeline.cli import main
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.images import jpeg_bytes, lesion
from tests.helpers.sources import kaggle_files

BUCKET = "faults"


CLASSES = ("melanoma", "nevus", "basal_cell_carcinoma")


PER_CLASS = 4


SOURCE = f"gs://{BUCKET}/three"


DOWNLOAD = "alt=media"  # in the request line of every object download


# The tests' SOURCE_RETRY_SECONDS, and how far past it a failure may come: the reads in
# flight finish their current try, and this machine's CPUs are shared.
RETRY_SECONDS = 3.0


SLACK_SECONDS = 20.0


LESIONPIPE = str(Path(sys.executable).parent / "lesionpipe")


@pytest.fixture(scope="module")
def emulator_port(gcs_emulator) -> int:
    """The emulator, holding a 3-class folder source and a zip of it."""
    from google.cloud import storage

    bucket = storage.Client().create_bucket(BUCKET)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for k, cls in enumerate(CLASSES):
            for i in range(PER_CLASS):
                data = jpeg_bytes(lesion(10 * k + i, "nevus" if cls == "basal_cell_carcinoma" else cls))
                bucket.blob(f"three/{cls}/{i}.jpg").upload_from_string(data)
                zf.writestr(f"{cls}/{i}.jpg", data)
    bucket.blob("archives/three.zip").upload_from_string(archive.getvalue())
    return urlsplit(gcs_emulator).port


@pytest.fixture
def faulty(emulator_port, monkeypatch):
    """Starts a FaultProxy in front of the emulator and points the storage client at it,
    with SOURCE_RETRY_SECONDS cut to RETRY_SECONDS."""
    proxies: list[FaultProxy] = []

    def start(mode: str = "refuse", **options) -> FaultProxy:
        proxy = FaultProxy(("127.0.0.1", emulator_port), mode, **options)
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        monkeypatch.setattr(gcs, "_gcs_clients", [])  # the client reads the host when made
        monkeypatch.setattr(gcs, "SOURCE_RETRY_SECONDS", RETRY_SECONDS)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


def downloads(proxy: FaultProxy) -> list[str]:
    """The object names downloaded through ``proxy``, in order, failed attempts included."""
    return [line.split("/o/")[1].split("?")[0].replace("%2F", "/") for line in proxy.requests if DOWNLOAD in line]


@pytest.mark.parametrize(
    "mode, status, cause",
    [
        ("refuse", 0, "connection refused"),
        ("reset", 0, "connection reset|closed connection|broken pipe"),  # depends on when the RST lands
        ("hang", 0, "timed out"),
        ("status", 503, "HTTP 503 Service Unavailable"),
        ("status", 429, "HTTP 429 Too Many Requests"),
    ],
)
def test_a_source_failing_mid_ingest_fails_the_step_and_quarantines_nothing(faulty, tmp_path, mode, status, cause):
    proxy = faulty(mode, fail_after_requests=5, counting=DOWNLOAD, status=status)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as failure:
        ingest(SOURCE, DataConfig(ingest_workers=4), tmp_path / "out")
    message = str(failure.value)
    assert message.startswith(f"cannot read {SOURCE}/") and re.search(cause, message) and "\n" not in message
    assert time.monotonic() - proxy.failed_at < RETRY_SECONDS + SLACK_SECONDS
    assert time.monotonic() - started < RETRY_SECONDS + SLACK_SECONDS + 10
    assert not (tmp_path / "out").exists()  # no manifest: no file was quarantined for the outage


def test_the_first_read_that_fails_for_good_stops_the_others(faulty):
    workers = 2
    proxy = faulty("status", fail_after_requests=2, counting=DOWNLOAD, status=503)
    with pytest.raises(SourceUnavailable, match="HTTP 503"):
        ingest(SOURCE, DataConfig(ingest_workers=workers))
    # Two objects read, then only the reads in flight retried; the other objects (ten
    # more) were never requested, where each used to wait out its own deadline.
    assert len(set(downloads(proxy))) <= 2 + workers < PER_CLASS * len(CLASSES)
    assert time.monotonic() - proxy.failed_at < RETRY_SECONDS + SLACK_SECONDS


def test_an_outage_shorter_than_the_deadline_is_retried_through(faulty, monkeypatch):
    proxy = faulty("status", fail_after_requests=3, counting=DOWNLOAD, status=503, heal_after_s=1.5)
    monkeypatch.setattr(gcs, "SOURCE_RETRY_SECONDS", 30.0)
    result = ingest(SOURCE, DataConfig(ingest_workers=4))
    assert proxy.failed_at is not None  # the outage happened
    assert (result.report["ingested"], result.report["quarantined"]) == (PER_CLASS * len(CLASSES), 0)


def test_the_merge_reads_again_only_the_files_the_report_shows(faulty, tmp_path):
    proxy = faulty()
    # Two images of each class's four ingested: the other two (over the cap) are not shown.
    result = ingest(SOURCE, DataConfig(max_images_per_class=2), tmp_path / "out")
    m = result.manifest
    shown = sorted(m[m.status == "ingested"].uri.str.removeprefix(f"gs://{BUCKET}/"))
    assert len(shown) == 2 * len(CLASSES)
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/jpeg;base64,") == len(shown)
    names, files = downloads(proxy), PER_CLASS * len(CLASSES)
    assert len(set(names[:files])) == files  # the partition: every object once
    assert sorted(names[files:]) == shown  # the merge: the shown ones once more, for their previews


def test_a_source_failing_before_the_merge_costs_the_previews_not_the_run(faulty, tmp_path):
    proxy = faulty()
    cfg = DataConfig(ingest_workers=4)
    partition = ingest_partition(SOURCE, cfg)
    proxy.fail()
    started = time.monotonic()
    result = merge_partitions([partition], cfg, tmp_path / "out")
    assert (result.report["ingested"], result.report["quarantined"]) == (PER_CLASS * len(CLASSES), 0)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/jpeg;base64," not in page and page.count("[no preview]") == PER_CLASS * len(CLASSES)
    # The first read to fail for good stops the others: one deadline, not one per file.
    assert time.monotonic() - started < RETRY_SECONDS + SLACK_SECONDS


def test_listing_a_failing_source_fails_in_one_line(faulty):
    faulty().fail()
    started = time.monotonic()
    with pytest.raises(
        SourceUnavailable,
        match=f"^cannot list {SOURCE}/: connection refused, still failing after "
        r"\d+ s of retries$",
    ):
        ingest(SOURCE, DataConfig())
    assert time.monotonic() - started < RETRY_SECONDS + SLACK_SECONDS


def test_a_zip_on_a_failing_source_fails_in_one_line(faulty, tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path / "cache"))
    faulty().fail()
    with pytest.raises(SourceUnavailable, match=f"^cannot read gs://{BUCKET}/archives/three.zip: connection refused"):
        ingest(f"gs://{BUCKET}/archives/three.zip", DataConfig())
    assert not list((tmp_path / "cache").glob("*.zip"))


def test_cli_ingest_exits_1_with_one_error_line(faulty, tmp_path):
    faulty("refuse", fail_after_requests=5, counting=DOWNLOAD)
    result = CliRunner().invoke(main, ["ingest", "--data", SOURCE, "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read {SOURCE}/"), result.output
    assert "connection refused" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def _default_sigint() -> None:
    """A background job starts with SIGINT ignored (see test_pipeline_local): a terminal's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _untrained_model(folder: Path) -> Path:
    from components.training.models import seed_cnn

    path = folder / "model.keras"
    seed_cnn(len(CLASSES), 32, [0.0] * 3, [1.0] * 3).save(path)
    return path


@pytest.mark.parametrize("command", ["ingest", "evaluate"])
@pytest.mark.parametrize(
    "sent, exit_status", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)], ids=["SIGINT", "SIGTERM"]
)
def test_ctrl_c_or_sigterm_ends_an_ingest_of_a_slow_source_within_seconds(faulty, tmp_path, command, sent, exit_status):
    """Every download takes 2 s (a slow network); the signal goes to the CLI alone while
    the first one is held. Was (Ctrl-C): "Aborted!", exit status 1, after the reads
    already running had gone on to the end of their batch (here all twelve files, 20 s
    more), since leaving a thread pool waits for its running tasks."""
    proxy = faulty(delaying=DOWNLOAD, delay_s=2.0)
    out = tmp_path / "out"
    args = (
        ["ingest", "--data", SOURCE, "--output-dir", str(out)]
        if command == "ingest"
        else ["evaluate", "--model", str(_untrained_model(tmp_path)), "--data", SOURCE, "--out", str(out / "m.json")]
    )
    cli = subprocess.Popen(
        [LESIONPIPE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    deadline = time.time() + 120
    while not proxy.delayed:
        assert cli.poll() is None and time.time() < deadline, "no download started"
        time.sleep(0.05)
    time.sleep(0.5)
    began = time.monotonic()
    cli.send_signal(sent)
    try:
        _, stderr = cli.communicate(timeout=60)
    finally:
        cli.kill()
    seconds = time.monotonic() - began
    print(f"lesionpipe {command}, {signal.Signals(sent).name} to exit: {seconds:.1f} s")
    assert seconds < 10 and cli.returncode == exit_status, (seconds, cli.returncode, stderr[-2000:])
    if sent == signal.SIGINT:
        assert stderr.strip().splitlines()[-1] == "Interrupted (Ctrl-C)." and "Traceback" not in stderr
    assert len(proxy.delayed) < PER_CLASS * len(CLASSES)  # the ingest did not finish
    assert not out.exists()


def test_gcs_prefix_is_listed_and_read(bucket, tmp_path):
    result = ingest("gs://lesions/kaggle", DataConfig(), tmp_path)
    r, m = result.report, result.manifest
    assert (r["files_found"], r["ingested"], r["ignored"]) == (13, 12, 1)
    assert r["source_splits"] == {"test": 6, "train": 6}
    uri = m[m.relpath == "Train/nevus/nev_2.jpg"].uri.iloc[0]
    assert uri == "gs://lesions/kaggle/Train/nevus/nev_2.jpg"
    assert read_bytes(uri) == kaggle_files()["Train/nevus/nev_2.jpg"]


def test_gcs_objects_over_max_file_bytes_are_quarantined_unread(bucket):
    for name, data in kaggle_files().items():
        bucket.blob(f"sized/{name}").upload_from_string(data)
    bucket.blob("sized/Train/nevus/big.jpg").upload_from_string(os.urandom(50_000))
    result = ingest("gs://lesions/sized", DataConfig(max_file_bytes=20_000))
    row = result.manifest.set_index("relpath").loc["Train/nevus/big.jpg"]
    assert (row.bytes, row.status, row.reason_code, row.md5) == (50_000, "quarantined", "too_large", "")
    assert result.report["ingested"] == 12
    assert read_bytes("gs://lesions/sized/Train/nevus/big.jpg", 50_000)[:1]
    with pytest.raises(FileTooLarge):  # a download stops at the limit
        read_bytes("gs://lesions/sized/Train/nevus/big.jpg", 49_999)


def test_gcs_errors_are_user_errors(bucket):
    with pytest.raises(SourceError, match="cannot list gs://no-such-bucket/"):
        ingest("gs://no-such-bucket/x", DataConfig())
    with pytest.raises(IngestError, match="no files found"):
        ingest("gs://lesions/empty-prefix", DataConfig())
    with pytest.raises(FileNotFoundError):
        sources.read_bytes("gs://lesions/kaggle/missing.jpg")
