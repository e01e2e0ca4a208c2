"""The champion re-scored on the new model's test split, in the same step, and the paired
difference between the two (components.scoring.intervals): what the gate
(components.registry.gate) decides on."""

from __future__ import annotations

from pathlib import Path

from components.core.settings import EvaluateConfig
from components.scoring.intervals import Difference
from components.scoring.metrics import Scored


def score_champion_on_test_split(
    champion_uri: str, tracking_uri: str, normalized_dir: str | Path, cfg: EvaluateConfig
) -> tuple[Scored | None, str]:
    """(the champion's probabilities and metrics on the test split, ''), or (None, why it
    cannot be scored). A champion that cannot be downloaded now (a server error, not "not
    found") raises components.scoring.inference.ModelUnavailable.

    The test images are streamed from their shards in batches; a champion trained at
    another image size or resize mode is fed the same test images re-read from their
    sources with its own preprocessing, a few batches at a time."""
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
    if (champion.image_size, champion.resize_mode) != (meta["image_size"], meta.get("resize_mode", "pad")):
        probs, errors = champion.probabilities_of_files(uris, cfg.batch_size, cfg.tta)
        if any(errors):
            return None, f"test images unreadable for its preprocessing: {next(e for e in errors if e)}"
    else:
        probs = champion.predict(
            tfrecords.image_dataset(paths, meta["image_size"], len(labels)), cfg.batch_size, cfg.tta
        )
    return Scored(
        labels,
        probs,
        classification_metrics(labels, probs, meta["classes"], cfg.melanoma_class, champion.decision_bias),
    ), ""


def compare(new: Scored, champion: Scored, normalized_dir: str | Path, cfg: EvaluateConfig) -> Difference | None:
    """``new`` minus ``champion`` on the gate's metric, paired bootstrap over the test
    split's lesions (images where it has no lesion ids)."""
    from components.data import tfrecords
    from components.scoring.intervals import paired_difference, resampling

    _, uris = tfrecords.read_labels(tfrecords.shard_paths(normalized_dir, "test"))
    groups, unit = tfrecords.read_test_groups(normalized_dir, uris)
    plan = resampling(groups, len(uris), unit, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    return paired_difference(cfg.champion_metric, plan, new, champion, cfg.melanoma_class)
