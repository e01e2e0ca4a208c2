"""A model card per registered version: built from the evaluation and the gate, logged
with the version, linked from its description, printed by `lesionpipe card`."""

import json

from click.testing import CliRunner

from components.core import filenames
from components.core.settings import ChampionGateConfig, EvaluateConfig
from components.core.tracking import pipeline_run
from components.evaluation.evaluate import evaluate
from components.registry.model_card import build_card, card_markdown, card_of_model
from components.training.train import train
from components.training.trained_model import log_trained_model
from pipeline.cli import main
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

METRICS = {
    "classes": ["melanoma", "nevus"],
    "balanced_accuracy": 0.7,
    "intervals": {"values": {"balanced_accuracy": [0.6, 0.8]}},
    "per_lesion": {"balanced_accuracy": 0.72, "intervals": {"values": {}}},
    "calibration": {"temperature": 1.5, "ece_before": 0.1, "ece_after": 0.03},
    "operating_points": {
        "points": {
            "sensitivity": {
                "target": 0.95,
                "threshold": 0.12,
                "test": {"sensitivity": 0.93, "specificity": 0.5, "sensitivity_ci": [0.88, 0.97]},
            }
        }
    },
    "referral": {"at": {"90": {"accuracy": 0.8, "melanoma_sensitivity": 0.9}}},
    "subgroups": [
        {"attribute": "body_site", "value": "back", "level": "lesion", "n": 12, "melanomas": 2, "small": True}
        | {"melanoma_sensitivity": 0.0, "melanoma_sensitivity_ci": [0.0, 0.0]}
    ],
}


def test_the_card_holds_every_part_of_the_evaluation():
    card = build_card(
        "m", "3", "runs:/r/model", METRICS, {"alias": "challenger", "reason": "why"}, {"fingerprint": "f"}
    )
    assert card["model_details"]["version"]["name"] == "3"
    slices = {(m["type"], m.get("slice", "")) for m in card["quantitative_analysis"]["performance_metrics"]}
    assert {("balanced_accuracy", ""), ("balanced_accuracy", "per lesion"), ("ece_after", "calibration")} <= slices
    assert ("melanoma_sensitivity", "target sensitivity 0.95") in slices
    assert ("accuracy", "90 % coverage (referral)") in slices
    assert ("melanoma_sensitivity", "body_site=back (lesions, n=12, 2 melanomas, small)") in slices
    md = card_markdown(card)
    for part in ("## Intended use", "## Out of scope", "## Training data", "## Champion gate", "## Limitations"):
        assert part in md
    assert "0.700 [0.600, 0.800]" in md and "0.930 [0.880, 0.970]" in md and "skin-tone" in md
    assert "body_site=back (lesions, n=12, 2 melanomas, small)" in md


def test_register_logs_the_card_with_the_version_and_card_prints_it(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    from components.registry.register import register

    normalized = make_tiny_shards(tmp_path)
    cfg = tiny_config(model="seed_cnn", epochs=1)
    run_id = pipeline_run(mlflow_server, "card-test", "run", f"kfp-card-{tmp_path.name}")
    result = train(normalized, None, cfg.train, tmp_path / "model")
    evaluate(result.model_path, normalized, cfg.evaluate, tmp_path / "eval")
    uri = log_trained_model(tmp_path / "model", mlflow_server, run_id)
    name = f"card-test-{tmp_path.name}"[-60:]
    gate = register(
        evaluation_dir=tmp_path / "eval",
        normalized_dir=normalized,
        evaluate=EvaluateConfig(),
        champion_gate=ChampionGateConfig(),
        model_name=name,
        model_uri=uri,
        data_fingerprint="a" * 64,
        tracking_uri=mlflow_server,
        mlflow_run_id=run_id,
        output_dir=tmp_path / "reg",
    )
    version = MlflowClient(mlflow_server, registry_uri=mlflow_server).get_model_version(name, gate["version"])
    assert version.tags["model_card"] == f"runs:/{run_id}/model_card/{filenames.MODEL_CARD_MD}"
    assert "Model card: runs:/" in version.description and "lesionpipe card" in version.description
    printed = CliRunner().invoke(
        main, ["card", "--model", f"models:/{name}/{gate['version']}", "--tracking-uri", mlflow_server]
    )
    assert printed.exit_code == 0, printed.output
    assert printed.output.startswith(f"# Model card: {name} version {gate['version']}")
    assert "Calibration (test split)" in printed.output
    as_json = json.loads(card_of_model(f"models:/{name}@{gate['alias']}", mlflow_server, as_json=True))
    assert as_json["gate"]["alias"] == gate["alias"]
    missing = CliRunner().invoke(main, ["card", "--model", str(tmp_path / "nothing")])
    assert missing.exit_code != 0 and "no model card at" in missing.output
