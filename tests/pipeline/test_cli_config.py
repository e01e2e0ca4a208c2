"""`lesionpipe config show` (the effective config) and `lesionpipe ui` (which store it opens)."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import RunConfig


def test_config_show_prints_the_effective_config_with_defaults_and_overrides(tmp_path):
    overrides = ["train.epochs=3", f"data.source={tmp_path / 'images'}"]
    result = CliRunner().invoke(
        main, ["config", "show", "--config", "configs/ham10000.yaml", *sum((["--set", o] for o in overrides), [])]
    )
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["train"]["epochs"] == 3 and shown["train"]["model"] == "efficientnet_lite0"  # override, file
    assert shown["data"]["source"] == str(tmp_path / "images")
    assert shown["data"]["max_file_bytes"] == 256 * 2**20  # a default the file does not set
    assert shown["cluster"]["resources"]["train"]["memory_limit"] == "32Gi"
    # A complete config: loaded back (from another folder), it is the same config.
    path = tmp_path / "shown.yaml"
    path.write_text(result.output)
    assert RunConfig.load(path) == RunConfig.load("configs/ham10000.yaml", overrides)


def test_config_show_without_a_file_is_the_built_in_defaults():
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == RunConfig().to_dict()


def test_config_show_refuses_an_unknown_key_in_one_line():
    result = CliRunner().invoke(main, ["config", "show", "--set", "train.epoch=3"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: unknown config key 'train.epoch' (did you mean 'epochs'? known: "
        + ", ".join(sorted(RunConfig().to_dict()["train"]))  # not melanoma_class: the run's
        + ")"
    ]


@pytest.fixture
def execv(monkeypatch):
    """os.execv recorded instead of replacing the test process."""
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    return calls


def _run_folder(out, name: str, uri: str, age_s: float) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"tracking_uri": uri}))
    stamp = time.time() - age_s
    os.utime(folder / "summary.json", (stamp, stamp))


def test_ui_opens_the_store_the_newest_run_recorded_from_any_working_folder(tmp_path, monkeypatch, execv):
    out = tmp_path / "runs"
    _run_folder(out, "demo-1", "sqlite:////old/mlflow.db", age_s=60)
    _run_folder(out, "demo-2", f"sqlite:///{tmp_path}/mlflow.db", age_s=0)
    monkeypatch.chdir(tmp_path / "runs")  # elsewhere than where the runs started
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")
    result = CliRunner().invoke(main, ["ui", "--output-dir", str(out), "--port", "5123"])
    assert result.exit_code == 0, result.output
    [argv] = execv
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert argv[argv.index("--port") + 1] == "5123"
    assert str(out / "demo-2" / "summary.json") in result.output


def test_ui_without_runs_uses_the_environment_then_the_working_folder(tmp_path, monkeypatch, execv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")
    assert CliRunner().invoke(main, ["ui"]).exit_code == 0
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert CliRunner().invoke(main, ["ui", "--tracking-uri", "sqlite:////given.db"]).exit_code == 0
    assert CliRunner().invoke(main, ["ui"]).exit_code == 0
    stores = [argv[argv.index("--backend-store-uri") + 1] for argv in execv]
    assert stores == ["sqlite:////elsewhere.db", "sqlite:////given.db", f"sqlite:///{tmp_path}/mlflow.db"]


def test_ui_on_a_tracking_server_says_where_to_browse(tmp_path, execv):
    _run_folder(tmp_path, "cluster-1", "http://mlflow.example:5000", age_s=0)
    result = CliRunner().invoke(main, ["ui", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0 and execv == []
    assert "http://mlflow.example:5000" in result.output
