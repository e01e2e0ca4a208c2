"""The champion gate as the register step calls it, for tests that hold a model's scores."""

from __future__ import annotations

from pathlib import Path

from components.core.settings import ChampionGateConfig, EvaluateConfig
from components.registry.champion import register_and_promote
from components.registry.rescoring import Candidate
from components.registry.training_record import TrainingRecord
from components.scoring.metrics import Scored


def gate_config(**kwargs) -> ChampionGateConfig:
    """The gate's settings; tiny test splits hold a few dozen images, so no minimum by default."""
    return ChampionGateConfig(**{"min_test_images": 1, **kwargs})


def promote(
    tracking_uri: str,
    model_name: str,
    model_uri: str,
    scored: Scored,
    normalized_dir: str | Path,
    gate: ChampionGateConfig,
    fingerprint: str,
    record: TrainingRecord | None = None,
) -> dict:
    """register_and_promote of a model trained on ``normalized_dir`` (its record, unless ``record``)."""
    new = Candidate(scored, Path(normalized_dir), record or TrainingRecord.of(normalized_dir), EvaluateConfig(), gate)
    return register_and_promote(
        tracking_uri=tracking_uri, model_name=model_name, model_uri=model_uri, new=new, data_fingerprint=fingerprint
    )
