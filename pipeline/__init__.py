"""lesion-pipeline: the KFP pipeline wiring, the run config, the CLI and MLflow helpers."""
