"""`lesionpipe`: every option of every command says what it is for in --help; `lesionpipe
ingest` writes its outputs and fails in one line."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.helpers.sources import csv_source


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += commands(command, f"{prefix}{name} ")
    return found


@pytest.mark.parametrize("name, command", commands(main), ids=[name for name, _ in commands(main)])
def test_every_option_has_help(name, command):
    undocumented = [
        p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]
    assert undocumented == [], f"lesionpipe {name}: options without help"
    assert (command.help or "").strip(), f"lesionpipe {name} has no description"


def test_cli_ingest_writes_outputs_and_fails_in_one_line(tmp_path):
    root = csv_source(tmp_path / "ham", "ham10000")
    runner = CliRunner()
    ok = runner.invoke(
        main, ["ingest", "--data", str(root), "--output-dir", str(tmp_path / "out"), "--format", "ham10000"]
    )
    assert ok.exit_code == 0, ok.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "manifest.parquet",
        "report.json",
        "report.md",
        "report.html",
    }
    (tmp_path / "empty" / "melanoma").mkdir(parents=True)
    (tmp_path / "empty" / "melanoma" / "notes.txt").write_text("nothing")
    for data in (tmp_path / "empty", tmp_path / "missing", "gs://"):
        bad = runner.invoke(main, ["ingest", "--data", str(data), "--output-dir", str(tmp_path / "bad")])
        assert bad.exit_code != 0
        lines = bad.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in bad.output
