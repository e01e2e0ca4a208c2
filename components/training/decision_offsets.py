"""The train step's last act: what is fitted on the validation split and saved beside
the model, from one pass over it (the 8 flips and turns of each image averaged, as
evaluate scores with evaluate.tta, on in the HAM10000 configs; the train step does not
read evaluate.*): with ``train.calibrate`` the temperature (components.scoring.calibration),
then, on the calibrated probabilities, with ``train.balance_decisions`` the per-class
decision offsets (components.scoring.decisions), and with ``train.calibrate`` the melanoma
operating points (components.scoring.operating_points) and the referral threshold
(components.scoring.referral). Averaged probabilities are less extreme than single
views', so offsets fitted on single views over-correct them (HAM10000 at b84ee3b, test
balanced accuracy 0.748 against 0.755 fitted on TTA probabilities)."""

from pathlib import Path

import numpy as np

from components.core.settings import TrainConfig
from components.training.train_input import TrainingData


def fit_on_validation(
    model,
    data: TrainingData,
    tc: TrainConfig,
    out: Path,
    melanoma_class: str = "melanoma",
    tracking_uri: str = "",
    mlflow_run_id: str = "",
) -> None:
    """Fit and save what ``tc`` asks for on the validation split (nothing without one)."""
    from components.scoring import calibration, operating_points, referral
    from components.scoring.inference import predict_views

    labels = np.asarray(data.val_labels, dtype=int)
    if not (tc.calibrate or tc.balance_decisions) or not len(labels):
        return
    views = predict_views(model, data.val_images, tc.batch_size, tta=True)
    probs = views.mean(axis=1)
    fitted_on = f"validation split ({len(labels)} images, 8 flips/turns averaged)"
    logged: dict[str, float] = {}
    if tc.calibrate:
        temperature = calibration.fit_temperature(probs, labels)
        figures = calibration.calibration_figures(probs, labels, temperature)
        calibration.write_calibration(out, temperature, fitted_on, figures)
        print(
            f"temperature {temperature:.3f} fitted on the validation split: its ECE "
            f"{figures['ece_before']:.3f} -> {figures['ece_after']:.3f}",
            flush=True,
        )
        logged.update({f"val_{k}": v for k, v in figures.items() if v is not None})
        probs, views = (
            calibration.apply_temperature(probs, temperature),
            calibration.apply_temperature(views, temperature),
        )
    if tc.balance_decisions:
        logged.update(balance_decisions(probs, labels, data.meta["classes"], out, fitted_on))
    if tc.calibrate:
        classes = data.meta["classes"]
        if melanoma_class in classes:
            mel = classes.index(melanoma_class)
            points = operating_points.fit_operating_points(
                probs[:, mel],
                labels == mel,
                tc.melanoma_target_sensitivity,
                tc.melanoma_target_specificity,
                tc.melanoma_flag,
            )
            operating_points.write_operating_points(out, melanoma_class, points, fitted_on)
        scores = referral.uncertainty(probs, views)
        threshold = referral.fit_refer_threshold(scores, tc.refer_coverage)
        referral.write_referral(out, tc.refer_coverage, threshold, fitted_on, tta=True)
    if mlflow_run_id and logged:
        from components.core import tracking

        tracking.client(tracking_uri).log_batch(mlflow_run_id, metrics=tracking.metrics_at(logged))


def balance_decisions(probs: np.ndarray, labels: np.ndarray, classes: list[str], out: Path, fitted_on: str) -> dict:
    """Fits the per-class decision offsets on the validation probabilities and saves them
    in ``out``; returns the validation balanced accuracy without and with them."""
    from sklearn.metrics import balanced_accuracy_score

    from components.scoring.decisions import (
        MIN_IMAGES_TO_FIT,
        decide_classes,
        fit_balanced_bias,
        too_few_to_fit,
        write_decision_bias,
    )

    bias = fit_balanced_bias(probs, labels, len(classes))
    unfitted = [c for c, few in zip(classes, too_few_to_fit(labels, len(classes))) if few]
    if unfitted:
        print(
            f"decision offsets: {', '.join(unfitted)} keep offset 0 (fewer than {MIN_IMAGES_TO_FIT} validation images)",
            flush=True,
        )
    write_decision_bias(out, classes, bias, fitted_on)
    before = balanced_accuracy_score(labels, decide_classes(probs))
    after = balanced_accuracy_score(labels, decide_classes(probs, bias))
    print(
        f"decision offsets fitted on the validation split: its balanced accuracy {before:.3f} -> {after:.3f} "
        f"(fitted on these images, so optimistic; the test split says what holds)",
        flush=True,
    )
    return {"val_tta_balanced_accuracy": before, "val_tta_balanced_accuracy_balanced_decisions": after}
