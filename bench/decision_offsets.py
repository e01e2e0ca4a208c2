"""What decision offsets (components.scoring.decisions) fitted on the validation split do on the
test split, for models that `lesionpipe run` trained, and what averaging those models
does to the melanoma AUC. Prints JSON.

    python bench/decision_offsets.py OUTPUT_DIR [OUTPUT_DIR ...]

Each OUTPUT_DIR is a run's --output-dir (its latest/summary.json names the model, the
MLflow store and the pipeline run, whose split step holds the split). The runs must share
one split (same data and split settings). Per model: test balanced accuracy by plain
argmax and with offsets fitted on the validation split's TTA probabilities, and the test
melanoma AUC (which offsets do not change); then the same for the mean of all models'
probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.core import filenames  # noqa: E402  (after TF's log level)
from components.scoring.decisions import fit_balanced_bias  # noqa: E402
from components.scoring.inference import load_model  # noqa: E402
from components.scoring.metrics import classification_metrics  # noqa: E402


def split_probabilities(output_dir: Path) -> dict:
    """The run's model's TTA probabilities on its validation and test splits."""
    import pandas as pd

    summary = json.loads((output_dir / "latest" / filenames.SUMMARY).read_text())
    splits = pd.read_parquet(Path(summary["pipeline_run_dir"]) / "split-step" / "splits" / filenames.SPLITS)
    splits = splits[splits.status == "ingested"].sort_values("relpath")
    model = load_model(summary["model_uri"], summary["tracking_uri"])
    out = {"model_uri": summary["model_uri"], "classes": model.classes}
    for subset in ("val", "test"):
        rows = splits[splits.subset == subset]
        probs, errors = model.probabilities_of_files(rows.uri.tolist(), tta=True)
        if any(errors):
            raise SystemExit(f"{output_dir}: unreadable {subset} image: {next(e for e in errors if e)}")
        out[subset] = (probs, rows.label.map(model.classes.index).to_numpy(), rows.relpath.tolist())
    return out


def scores(val: tuple, test: tuple, classes: list[str], melanoma_class: str) -> dict:
    """The test metrics as evaluate computes them (components.scoring.metrics), by plain
    argmax and with offsets fitted on the validation split."""
    bias = fit_balanced_bias(val[0], val[1], len(classes))
    argmax = classification_metrics(test[1], test[0], classes, melanoma_class)
    shifted = classification_metrics(test[1], test[0], classes, melanoma_class, bias.tolist())
    return {
        "test_balanced_accuracy_argmax": round(argmax["balanced_accuracy"], 4),
        "test_balanced_accuracy_offsets": round(shifted["balanced_accuracy"], 4),
        "test_melanoma_auc": round(argmax["melanoma_auc"], 4),
        "offsets": dict(zip(classes, np.round(bias, 3).tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dirs", nargs="+", type=Path)
    parser.add_argument("--melanoma-class", default="melanoma")
    args = parser.parse_args()
    runs = [split_probabilities(d) for d in args.output_dirs]
    first = runs[0]
    for d, run in zip(args.output_dirs, runs):
        if run["classes"] != first["classes"] or any(run[s][2] != first[s][2] for s in ("val", "test")):
            raise SystemExit(f"{d} was trained on another split or classes than {args.output_dirs[0]}")
    report = {
        "test_images": len(first["test"][1]),
        "val_images": len(first["val"][1]),
        "models": [
            {
                "output_dir": str(d),
                "model_uri": run["model_uri"],
                **scores(run["val"], run["test"], run["classes"], args.melanoma_class),
            }
            for d, run in zip(args.output_dirs, runs)
        ],
    }
    if len(runs) > 1:
        mean = {s: (np.mean([r[s][0] for r in runs], axis=0), first[s][1]) for s in ("val", "test")}
        report["mean_of_all_models"] = scores(mean["val"], mean["test"], first["classes"], args.melanoma_class)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
