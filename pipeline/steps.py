"""The pipeline's steps, one table: for each step, its component function, its image, how
the cluster runs it (retries, caching, MLflow credentials) and its pod's default
resources. The pipeline's components (pipeline.pipeline) and the ``cluster.resources``
section of the run config (pipeline.config) are made from it, so a step is added or
renamed in one place.

The component functions are named by import path and imported when the pipeline is
built: a run config loads without the steps' modules (TensorFlow, scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.core.config_base import Section


class StepResources(Section):
    """Kubernetes requests and limits of one step's pod (quantities as kubectl writes them)."""

    cpu_request: str = "500m"
    cpu_limit: str = "1"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"


def _resources(cpu_request: str, cpu_limit: str, memory_request: str, memory_limit: str) -> StepResources:
    return StepResources(
        cpu_request=cpu_request, cpu_limit=cpu_limit, memory_request=memory_request, memory_limit=memory_limit
    )


@dataclass(frozen=True)
class Step:
    component: str  # the @dsl.component function, as module.function
    network: bool  # reads the data source or talks to MLflow: transient failures retried with backoff
    cacheable: bool  # outputs depend only on its inputs, so KFP may reuse them
    mlflow: bool  # needs the MLflow credentials
    # Defaults of cluster.resources.<step>, sized for HAM10000-scale data at 128 px.
    resources: StepResources = field(default_factory=StepResources)
    gpu: bool = False  # runs on the GPU image (cluster.gpu asks for the accelerator)
    sizing: str = ""  # what the resources are sized for, where it is not obvious (docs/configuration.md)


# In the order data flows. Never cached: list_source (its job is to look at the source
# now), the gate (the champion moves between runs), train and evaluate (each run logs in
# MLflow), register (the champion moves), report (it logs the data reports) and finish_run. Ingest
# shards are cached only while the source lists the same files. ingest_merge reads the
# source for the report's previews only, and a failed read there is a "[no preview]",
# never a failure of the step: nothing for a retry to fix.
STEPS: dict[str, Step] = {
    "list_source": Step(
        "components.data.listing.list_source_step",
        network=True,
        cacheable=False,
        mlflow=False,
        resources=_resources("250m", "1", "512Mi", "1Gi"),
    ),
    "ingest_partition": Step(
        "components.data.ingest.ingest_partition_step",
        network=True,
        cacheable=True,
        mlflow=False,
        resources=_resources("1", "2", "2Gi", "4Gi"),
        sizing="Per ingest task (a partition of the listing): reading, hashing and decoding with "
        "data.ingest_workers threads; every task lists the whole source (~1.5 kB a file: "
        "~0.8 GB at 400,000 files).",
    ),
    "ingest_merge": Step(
        "components.data.ingest.ingest_merge_step",
        network=False,
        cacheable=True,
        mlflow=False,
        resources=_resources("1", "2", "2Gi", "4Gi"),
        sizing="Duplicates and near-duplicates across partitions: the manifest's rows, ~2 kB a "
        "file (thumbnails stay in the partitions' files; the report's previews are made "
        "from the few hundred files it shows, read again): 0.38 GB measured at 100,000 "
        "files, ~1.1 GB at 400,000 (docs/performance.md, bench/scale.py).",
    ),
    "retrain_gate": Step(
        "components.registry.retrain_gate.retrain_gate_step",
        network=True,
        cacheable=False,
        mlflow=True,
        resources=_resources("250m", "1", "1Gi", "2Gi"),
    ),
    "split": Step("components.data.split.split_step", network=False, cacheable=True, mlflow=False),
    "normalize_shard": Step(
        "components.data.normalize.normalize_shard_step",
        network=True,
        cacheable=True,
        mlflow=False,
        resources=_resources("2", "4", "4Gi", "8Gi"),
        sizing="Per normalize task (one TFRecord shard): decoding and resizing images with 8 threads.",
    ),
    "normalize_gather": Step(
        "components.data.normalize.normalize_gather_step", network=False, cacheable=True, mlflow=False
    ),
    "augment": Step(
        "components.data.augment.augment_step",
        network=False,
        cacheable=True,
        mlflow=False,
        resources=_resources("1", "2", "4Gi", "8Gi"),
    ),
    "train": Step(
        "components.training.train.train_step",
        network=True,
        cacheable=False,
        mlflow=True,
        resources=_resources("4", "8", "16Gi", "32Gi"),
        gpu=True,
    ),
    "evaluate": Step(
        "components.evaluation.evaluate.evaluate_step",
        network=True,
        cacheable=False,
        mlflow=True,
        resources=_resources("2", "4", "8Gi", "16Gi"),
    ),
    "register": Step(
        "components.registry.register.register_step",
        network=True,
        cacheable=False,
        mlflow=True,
        resources=_resources("1", "2", "4Gi", "8Gi"),
    ),
    "report": Step(
        "components.evaluation.run_summary.report_step",
        network=True,
        cacheable=False,
        mlflow=True,
        resources=_resources("100m", "500m", "256Mi", "512Mi"),
    ),
    # The exit handler: ends the MLflow run FINISHED, FAILED or KILLED, after every other task.
    "finish_run": Step(
        "components.registry.run_end.finish_run_step",
        network=True,
        cacheable=False,
        mlflow=True,
        resources=_resources("100m", "500m", "256Mi", "512Mi"),
    ),
}
