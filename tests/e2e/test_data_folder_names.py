"""Data folders named as people name them (a date, a word YAML reads as a value, spaces,
brackets, non-ASCII) are read by every command as named: `lesionpipe ingest` and
`lesionpipe run` agree on what --data means (was: run parsed --data as a YAML value, a
folder named 2024-06-01 became a date, yes a boolean, and null the SYNTHETIC demo data)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.helpers import write_class_folder
from tests.helpers.servers import free_port

LESIONPIPE = str(Path(sys.executable).parent / "lesionpipe")
NAMES = ["2024-06-01", "null", "yes", "1e5", "[a]", "a b", "ü"]
PER_CLASS = 5  # 20 images: not the synthetic demo's count at any setting used here


@pytest.mark.parametrize("name", NAMES)
def test_ingest_and_run_read_the_folder_as_named(tmp_path, monkeypatch, name):
    write_class_folder(tmp_path / name, per_class=PER_CLASS, size=40)
    monkeypatch.chdir(tmp_path)
    ingested = CliRunner().invoke(main, ["ingest", "--data", name, "--output-dir", "ingested"])
    assert ingested.exit_code == 0, ingested.output
    report = json.loads((tmp_path / "ingested" / "report.json").read_text())
    assert (report["files_found"], report["ingested"], report["synthetic"]) == (4 * PER_CLASS, 4 * PER_CLASS, False)

    # run takes the same folder: its checks pass (the source is found) and it stops at the
    # next one, a tracking server that is not there, in one line.
    down = f"http://127.0.0.1:{free_port()}"
    ran = CliRunner().invoke(main, ["run", "--data", name, "--tracking-uri", down, "--output-dir", "out"])
    assert ran.exit_code == 1 and "Traceback" not in ran.output
    assert ran.output.strip().splitlines()[-1].startswith("Error: ") and down in ran.output
    missing = CliRunner().invoke(main, ["run", "--data", name + "-missing", "--tracking-uri", down])
    assert "data source not found" in missing.output  # the check that passed above is real


def test_run_with_data_null_trains_on_the_folder_named_null_not_the_synthetic_demo(tmp_path):
    write_class_folder(tmp_path / "null", per_class=PER_CLASS, size=40)
    tiny = [
        "data.image_size=32",
        "train.epochs=1",
        "train.batch_size=8",
        "data.num_shards=1",
        "data.ingest_partitions=1",
    ]
    proc = subprocess.run(
        [LESIONPIPE, "run", "--data", "null", *sum((["--set", s] for s in tiny), []), "--output-dir", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SYNTHETIC" not in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "out" / "latest" / "summary.json").read_text())
    assert summary["data"]["synthetic"] is False
    assert summary["data"]["files_found"] == summary["data"]["ingested"] == 4 * PER_CLASS
