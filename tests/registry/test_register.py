"""The register step's function: the version registered, its decision in gate.json, the
report and the runs; the gate compares only on test images neither model trained or
validated on, and keeps the new model challenger when too few remain."""

from __future__ import annotations

import json

from components.core import filenames
from components.core.settings import EvaluateConfig
from components.core.tracking import pipeline_run
from components.registry.champion_gate import CHALLENGER, CHAMPION
from components.registry.register import register
from components.registry.training_record import ARTIFACT, TrainingRecord, load_record
from tests.helpers.registry import gate_config


def _register(two_models: dict, which: str, tracking_uri: str, name: str, out, **gate) -> dict:
    model = two_models[which]
    return register(
        evaluation_dir=model["evaluation"],
        normalized_dir=two_models["normalized"],
        evaluate=EvaluateConfig(),
        champion_gate=gate_config(**gate),
        model_name=name,
        model_uri=model["uri"],
        data_fingerprint="f" * 64,
        tracking_uri=tracking_uri,
        mlflow_run_id=pipeline_run(tracking_uri, "register-test", which, f"kfp-register-{name}-{which}"),
        output_dir=out,
    )


def test_register_records_what_the_model_learned_from_and_compares_on_unseen_test_images(
    two_models, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    name = f"register-{abs(hash(str(two_models['normalized']))) % 10**6}"
    first = _register(two_models, "good", mlflow_server, name, tmp_path / "first")
    assert first["alias"] == CHAMPION
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    run_id = client.get_model_version(name, "1").run_id
    # The run that logged the model carries the record a later gate reads.
    assert ARTIFACT in {f.path for f in client.list_artifacts(run_id)}
    assert load_record(mlflow_server, run_id) == (TrainingRecord.of(two_models["normalized"]), "")

    # Same data: no test image was trained or validated on by either model, all are compared;
    # but a minimum above the split's size keeps the new model challenger, with the reason.
    second = _register(two_models, "bad", mlflow_server, name, tmp_path / "second", min_test_images=10**6)
    images = second["test_images"]
    assert images["compared"] == images["total"] > 0 and sum(images["left_out"].values()) == 0
    assert second["alias"] == CHALLENGER
    assert f"fewer than champion_gate.min_test_images={10**6}" in second["reason"]
    assert json.loads((tmp_path / "second" / filenames.GATE).read_text())["reason"] == second["reason"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
