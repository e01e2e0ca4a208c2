"""The train step's last act with ``train.balance_decisions``: the saved model's
per-class decision offsets, fitted on the validation split (components.scoring.decisions)."""

from pathlib import Path

from components.training.train_input import TrainingData


def balance_decisions(
    model, data: TrainingData, batch_size: int, out: Path, tracking_uri: str = "", mlflow_run_id: str = ""
) -> None:
    """Fits ``model``'s per-class decision offsets on the validation split and saves them
    in ``out`` (components.scoring.decisions); logs the validation balanced accuracy without and
    with them. Fitted on probabilities averaged over the 8 flips and turns, as evaluate
    scores with evaluate.tta (on in the HAM10000 configs; the train step does not read
    evaluate.*): averaged probabilities are less extreme than single views', so offsets
    fitted on single views over-correct them (docs/results.md, Decision offsets)."""
    from sklearn.metrics import balanced_accuracy_score

    from components.scoring.decisions import (
        MIN_IMAGES_TO_FIT,
        decide_classes,
        fit_balanced_bias,
        too_few_to_fit,
        write_decision_bias,
    )
    from components.scoring.inference import predict_probabilities

    classes, labels = data.meta["classes"], data.val_labels
    probs = predict_probabilities(model, data.val_images, batch_size, tta=True)
    bias = fit_balanced_bias(probs, labels, len(classes))
    unfitted = [c for c, few in zip(classes, too_few_to_fit(labels, len(classes))) if few]
    if unfitted:
        print(
            f"decision offsets: {', '.join(unfitted)} keep offset 0 (fewer than {MIN_IMAGES_TO_FIT} validation images)",
            flush=True,
        )
    write_decision_bias(out, classes, bias, f"validation split ({len(labels)} images, 8 flips/turns averaged)")
    before = balanced_accuracy_score(labels, decide_classes(probs))
    after = balanced_accuracy_score(labels, decide_classes(probs, bias))
    print(
        f"decision offsets fitted on the validation split: its balanced accuracy {before:.3f} -> {after:.3f} "
        f"(fitted on these images, so optimistic; the test split says what holds)",
        flush=True,
    )
    if mlflow_run_id:
        from components.core import tracking

        tracking.client(tracking_uri).log_batch(
            mlflow_run_id,
            metrics=tracking.metrics_at(
                {"val_tta_balanced_accuracy": before, "val_tta_balanced_accuracy_balanced_decisions": after}
            ),
        )
