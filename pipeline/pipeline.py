"""The KFP v2 pipeline: one factory, ``create_pipeline(cfg)``, used by every runner
(local, compile, submit, schedule), so the pipeline that runs on a laptop is the one
that runs on the cluster.

Shape: list the source -> ingest (N partition tasks, merged) -> retraining gate; then, only when the data changed
since the champion (or the run is forced): split -> normalize (N shard tasks, gathered)
-> augment -> train (GPU) -> evaluate -> register. Either branch ends in a ``report``
task whose JSON string is the run's summary. All of it runs inside an exit handler whose
task, ``finish_run``, runs last however the others ended and ends the MLflow run FINISHED,
FAILED or KILLED (components/registry/run_end.py).

Each task receives only the config section it reads, as a constant of the compiled
pipeline: a task's KFP cache key covers its inputs, so a change to ``train.*`` or
``evaluate.*`` keeps the data steps' cached outputs. The retraining gate alone gets the
whole config, as the flat params it logs to the MLflow run.

Kubernetes settings (resources, GPU, secrets, retries, caching) come from
``cfg.cluster``; the local runner ignores the Kubernetes ones.
"""

import importlib
from collections.abc import Callable

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask

from components.registry.retrain_gate import TRAIN
from pipeline.config import ClusterConfig, GpuConfig, RunConfig
from pipeline.images import pinned_images
from pipeline.retries import retry_transient
from pipeline.steps import STEPS

PIPELINE_NAME = "lesion-pipeline"
PIPELINE_DESCRIPTION = "Dermoscopic images -> trained, evaluated, registered skin-lesion classifier (MLflow)"
GCS_KEY_MOUNT = "/var/secrets/gcs"
GCS_KEY_FILE = "key.json"
# Secret key -> environment variable MLflow's client reads for basic auth.
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


def component_ops(cfg: RunConfig, note_unpinned: bool = True) -> dict[str, Callable]:
    """Every step (pipeline.steps.STEPS) as a KFP component on our images (kfp is already in
    them), by digest where one is recorded (pipeline.images); a step that touches the network
    retries its transient failures (pipeline.retries)."""
    images = pinned_images(cfg.images, warn=None if note_unpinned else lambda line: None)
    ops = {}
    for name, step in STEPS.items():
        module, _, function = step.component.rpartition(".")
        component = dsl.component(
            getattr(importlib.import_module(module), function),
            base_image=images.gpu if step.gpu else images.cpu,
            install_kfp_package=False,
        )
        retries = cfg.cluster.retries if step.network else 0
        ops[name] = retry_transient(component, retries, cfg.cluster.retry_backoff)
    return ops


def configure_task(task: PipelineTask, step: str, cluster: ClusterConfig) -> PipelineTask:
    """Pod resources, caching, credentials and GPU of one step (pipeline.steps.STEPS), from the
    config. No KFP retry policy: it would retry permanent failures too (pipeline.retries)."""
    policy = STEPS[step]
    res = getattr(cluster.resources, step)
    task.set_display_name(step.replace("_", "-"))
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    task.set_caching_options(cluster.caching and policy.cacheable)
    if cluster.secrets.gcs:
        # Every pod: its step may read gs:// data, and KFP's launcher in the same pod moves
        # the step's artifacts to and from the GCS pipeline_root.
        kubernetes.use_secret_as_volume(task, secret_name=cluster.secrets.gcs, mount_path=GCS_KEY_MOUNT)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_MOUNT}/{GCS_KEY_FILE}")
    if policy.mlflow and cluster.secrets.mlflow:
        kubernetes.use_secret_as_env(task, secret_name=cluster.secrets.mlflow, secret_key_to_env=MLFLOW_SECRET_KEYS)
    return request_gpu(task, cluster.gpu) if policy.gpu else task


def request_gpu(task: PipelineTask, gpu: GpuConfig) -> PipelineTask:
    if gpu.count == 0:
        return task
    task.set_accelerator_type(gpu.accelerator_type).set_accelerator_limit(gpu.count)
    t = gpu.toleration
    if t.key:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value or None, effect=t.effect or None)
    for label, value in gpu.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    return task


def create_pipeline(cfg: RunConfig, note_unpinned: bool = True) -> Callable:
    """``note_unpinned``: say on stderr which images run by tag (not for the local runner, which runs no image)."""
    ops = component_ops(cfg, note_unpinned)
    data = cfg.data.to_dict()
    experiment, model_name = cfg.mlflow.experiment, cfg.mlflow.model_name

    def step(name: str, **kwargs) -> PipelineTask:
        return configure_task(ops[name](**kwargs), name, cfg.cluster)

    @dsl.pipeline(name=PIPELINE_NAME, pipeline_root=cfg.cluster.pipeline_root or None, description=PIPELINE_DESCRIPTION)
    def lesion_pipeline(
        data_uri: str = cfg.data.source,
        tracking_uri: str = cfg.mlflow.tracking_uri,
        force_retrain: bool = False,
        checkpoint_root: str = "",
        kfp_ui_url: str = "",
        local_run_dir: str = "",
    ) -> None:
        run = {
            "tracking_uri": tracking_uri,
            "kfp_run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        }
        # Where a reviewer finds the run besides MLflow: its KFP page, or its local folder.
        origin = {"kfp_ui_url": kfp_ui_url, "local_run_dir": local_run_dir}
        # The exit handler's task runs last, however the others ended: it ends the MLflow run
        # FINISHED, FAILED or KILLED (the steps leave it RUNNING).
        finish = step("finish_run", experiment=experiment, **run)
        with dsl.ExitHandler(finish, name="run"):
            listing = step("list_source", data_uri=data_uri, data=data)
            with dsl.ParallelFor(
                items=list(range(cfg.data.ingest_partitions)), name="ingest-partitions"
            ) as ingest_index:
                partition = step(
                    "ingest_partition",
                    data_uri=data_uri,
                    data=data,
                    partition_index=ingest_index,
                    source_listing=listing.output,
                )
            manifest = step(
                "ingest_merge", partitions=dsl.Collected(partition.outputs["partition"]), data=data
            ).outputs["manifest"]
            gate = step(
                "retrain_gate",
                manifest=manifest,
                model_name=model_name,
                experiment=experiment,
                run_params=cfg.flat_params(),
                force_retrain=force_retrain,
                **run,
            )

            with dsl.If(gate.outputs["decision"] == TRAIN, name="retrain"):
                training_branch(
                    step, cfg, manifest=manifest, gate=gate, checkpoint_root=checkpoint_root, run=run, origin=origin
                )
            with dsl.Else(name="data-unchanged"):
                step(
                    "report",
                    gate_details=gate.outputs["details"],
                    manifest=manifest,
                    kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    **origin,
                )

    return lesion_pipeline


def training_branch(
    step: Callable[..., PipelineTask],
    cfg: RunConfig,
    *,
    manifest,
    gate: PipelineTask,
    checkpoint_root,
    run: dict,
    origin: dict,
) -> None:
    """The tasks of a run whose data changed since the champion (or that is forced):
    split -> normalize (N shard tasks, gathered) -> augment -> train -> evaluate ->
    register -> report. Each task gets its own section."""
    data, augment, train, evaluate = (
        cfg.data.to_dict(),
        cfg.augment.to_dict(),
        cfg.train.to_dict(),
        cfg.evaluate.to_dict(),
    )
    experiment, model_name = cfg.mlflow.experiment, cfg.mlflow.model_name
    splits = step("split", manifest=manifest, data=data).outputs["splits"]
    with dsl.ParallelFor(items=list(range(cfg.data.num_shards)), name="normalize-shards") as shard_index:
        shard = step("normalize_shard", splits=splits, data=data, shard_index=shard_index)
    normalized = step(
        "normalize_gather", shards=dsl.Collected(shard.outputs["shard"]), splits=splits, manifest=manifest, data=data
    ).outputs["normalized"]
    augmented = step("augment", normalized=normalized, augment=augment).outputs["augmented"]
    trained = step(
        "train",
        normalized=normalized,
        augmented=augmented,
        train=train,
        data_fingerprint=gate.outputs["fingerprint"],
        checkpoint_root=checkpoint_root,
        experiment=experiment,
        **run,
    )
    evaluation = step(
        "evaluate",
        model=trained.outputs["model"],
        normalized=normalized,
        evaluate=evaluate,
        experiment=experiment,
        **run,
    ).outputs["evaluation"]
    registered = step(
        "register",
        evaluation=evaluation,
        normalized=normalized,
        evaluate=evaluate,
        champion_gate=cfg.champion_gate.to_dict(),
        model_name=model_name,
        model_uri=trained.outputs["Output"],
        data_fingerprint=gate.outputs["fingerprint"],
        experiment=experiment,
        **run,
        **origin,
    )
    step(
        "report",
        gate_details=gate.outputs["details"],
        manifest=manifest,
        splits=splits,
        augmented=augmented,
        evaluation=evaluation,
        registration=registered.outputs["registration"],
        model_uri=trained.outputs["Output"],
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **origin,
    )
