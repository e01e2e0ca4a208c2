"""The comparison behind the champion gate: whether the two models' data are compatible,
the test images neither trained or validated on (components.registry.training_record), the
champion re-scored on them in the same step, and the paired difference between the two
(components.scoring.intervals), decided by components.registry.champion_gate."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from components.core.settings import ChampionGateConfig, EvaluateConfig
from components.registry.champion_gate import (
    Champion,
    GateDecision,
    decide_across_data,
    decide_promotion,
    incompatibility,
)
from components.registry.training_record import TrainingRecord
from components.scoring.intervals import Difference
from components.scoring.metrics import Scored


@dataclass(frozen=True)
class Candidate:
    """What the champion gate weighs: the new model's scores on its test split, the folder
    of that split, what the model learned from (None: a folder written before records)
    and the settings of scoring and of the gate."""

    scored: Scored
    normalized_dir: Path
    record: TrainingRecord | None
    evaluate: EvaluateConfig
    gate: ChampionGateConfig


def decide_against(champion: Champion | None, model_name: str, tracking_uri: str, new: Candidate) -> GateDecision:
    """The champion gate's decision on ``new`` against ``champion``: on compatible data, on
    the test images neither trained or validated on, if enough of them remain. A champion
    that cannot be downloaded now raises components.scoring.inference.ModelUnavailable."""
    from components.data import tfrecords
    from components.registry.training_record import fair_test_images, load_record

    gate = new.gate
    if champion is None:
        return decide_promotion(new.scored.metrics, None, gate)
    if new.record is None:
        problem = "this model's test split has no record of its images (normalized before records)"
        return decide_promotion(new.scored.metrics, None, gate, champion_problem=problem)
    champion_record, why_none = load_record(tracking_uri, champion.run_id)
    problem = incompatibility(new.record, champion_record, champion.synthetic, why_none)
    if problem:
        champion_synthetic = champion_record.synthetic if champion_record else champion.synthetic
        synthetic_over_real = new.record.synthetic and not champion_synthetic
        return decide_across_data(new.scored.metrics, problem, synthetic_over_real, gate)
    _, uris = tfrecords.read_labels(tfrecords.shard_paths(new.normalized_dir, "test"))
    fair = fair_test_images(new.normalized_dir, uris, {"the champion": champion_record, "this model": new.record})
    test_images = {"compared": int(fair.keep.sum()), "total": len(uris), "left_out": fair.left_out}
    if fair.keep.sum() < gate.min_test_images:
        problem = f"only {fair.describe()}, fewer than champion_gate.min_test_images={gate.min_test_images}"
        decision = decide_promotion(new.scored.metrics, None, gate, champion_problem=problem)
        return replace(decision, test_images=test_images)
    scored, problem = score_champion_on_test_split(
        f"models:/{model_name}/{champion.version}", tracking_uri, new.normalized_dir, new.evaluate, fair.keep
    )
    if scored is None:
        return decide_promotion(new.scored.metrics, None, gate, champion_problem=problem)
    kept = restricted(new.scored, fair.keep, new.evaluate.melanoma_class)
    difference = compare(kept, scored, new.normalized_dir, new.evaluate, gate, fair.keep)
    decision = decide_promotion(kept.metrics, scored.metrics, gate, difference=difference)
    return replace(decision, reason=f"{decision.reason} ({fair.describe()})", test_images=test_images)


def restricted(scored: Scored, keep: np.ndarray, melanoma_class: str) -> Scored:
    """``scored`` on the images ``keep`` marks, its metrics computed again on them."""
    from components.scoring.metrics import classification_metrics

    y, probs = scored.y_true[keep], scored.probs[keep]
    metrics = classification_metrics(y, probs, scored.metrics["classes"], melanoma_class, scored.decision_bias)
    return Scored(y, probs, metrics)


def score_champion_on_test_split(
    champion_uri: str,
    tracking_uri: str,
    normalized_dir: str | Path,
    cfg: EvaluateConfig,
    keep: np.ndarray | None = None,
) -> tuple[Scored | None, str]:
    """(the champion's probabilities and metrics on the test images ``keep`` marks (all:
    None), ''), or (None, why it cannot be scored). A champion that cannot be downloaded now
    (a server error, not "not found") raises components.scoring.inference.ModelUnavailable.

    The test images are streamed from their shards in batches; a champion trained at
    another image size or resize mode is fed the same test images re-read from their
    sources with its own preprocessing, a few batches at a time, each held to the md5 and
    size ingest recorded (sources.read_as_ingested), as normalize reads them."""
    from components.data import tfrecords
    from components.scoring.inference import ModelLoadError, load_model
    from components.scoring.metrics import classification_metrics

    try:
        champion = load_model(champion_uri, tracking_uri)
    except ModelLoadError as exc:
        return None, str(exc)
    meta = tfrecords.read_meta(normalized_dir)
    if champion.classes != meta["classes"]:
        return None, f"it predicts other classes ({', '.join(champion.classes)})"
    paths = tfrecords.shard_paths(normalized_dir, "test")
    labels, uris = tfrecords.read_labels(paths)
    keep = np.ones(len(uris), bool) if keep is None else keep
    if (champion.image_size, champion.resize_mode) != (meta["image_size"], meta.get("resize_mode", "pad")):
        kept = [u for u, k in zip(uris, keep) if k]
        read = _as_ingested(normalized_dir)
        probs, errors = champion.probabilities_of_files(kept, cfg.batch_size, cfg.tta, read=read)
        if any(errors):
            return None, f"test images unreadable for its preprocessing: {next(e for e in errors if e)}"
    else:
        probs = champion.predict(
            tfrecords.image_dataset(paths, meta["image_size"], len(labels)), cfg.batch_size, cfg.tta
        )[keep]
    metrics = classification_metrics(labels[keep], probs, meta["classes"], cfg.melanoma_class, champion.decision_bias)
    return Scored(labels[keep], probs, metrics), ""


def _as_ingested(normalized_dir: str | Path):
    """A reader of test image URIs that holds each to its recorded md5 and the size limit."""
    from components.data import tfrecords
    from components.data.sources import read_as_ingested, read_bytes

    images = tfrecords.read_images(normalized_dir)
    if images is None:  # a folder written before the images file: no md5 to hold them to
        return read_bytes
    test = images["subsets"].get("test", {})
    md5_of = dict(zip(test.get("uri", []), test.get("md5", [])))
    return lambda uri: read_as_ingested(uri, md5_of.get(uri, ""), images["max_file_bytes"])


def compare(
    new: Scored,
    champion: Scored,
    normalized_dir: str | Path,
    cfg: EvaluateConfig,
    gate: ChampionGateConfig,
    keep: np.ndarray | None = None,
) -> Difference | None:
    """``new`` minus ``champion`` on the gate's metric, both on the test images ``keep``
    marks (all: None), paired bootstrap over their lesions (images where it has no lesion ids)."""
    from components.data import tfrecords
    from components.scoring.intervals import paired_difference, resampling

    _, uris = tfrecords.read_labels(tfrecords.shard_paths(normalized_dir, "test"))
    keep = np.ones(len(uris), bool) if keep is None else keep
    uris = [u for u, k in zip(uris, keep) if k]
    groups, unit = tfrecords.read_test_groups(normalized_dir, uris)
    plan = resampling(groups, len(uris), unit, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    return paired_difference(gate.metric, plan, new, champion, cfg.melanoma_class)
