"""lesion-pipeline: the table of steps, the KFP pipeline wiring, the run config, the runners
(local, KFP client) and the CLI."""
