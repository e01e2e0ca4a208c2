"""The KFP v2 pipeline: one factory, ``create_pipeline(cfg)``, used by every runner
(local, compile, submit, schedule), so the pipeline that runs on a laptop is the one
that runs on the cluster.

Shape: list the source -> ingest (N shard tasks, merged) -> retraining gate; then, only when the data changed
since the champion (or the run is forced): split -> normalize (N shard tasks, gathered)
-> augment -> train (GPU) -> evaluate -> register. Either branch ends in a ``report``
task whose JSON string is the pipeline's output.

Each task receives only the config section it reads, as a constant of the compiled
pipeline: a task's KFP cache key covers its inputs, so a change to ``train.*`` or
``evaluate.*`` keeps the data steps' cached outputs. The retraining gate alone gets the
whole config, as the flat params it logs to the MLflow run.

Kubernetes settings (resources, GPU, secrets, retries, caching) come from
``cfg.cluster``; the local runner ignores the Kubernetes ones.
"""

from dataclasses import dataclass
from typing import Callable

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask

from components.data.augment import augment_step
from components.data.ingest import ingest_merge_step, ingest_shard_step
from components.data.listing import list_source_step
from components.data.normalize import normalize_gather_step, normalize_shard_step
from components.data.split import split_step
from components.evaluation.evaluate import evaluate_step
from components.registry.register import register_step
from components.registry.retrain_gate import TRAIN, retrain_gate_step
from components.registry.run_summary import report_step
from components.training.train import train_step
from pipeline.config import ClusterConfig, Config, GpuConfig

PIPELINE_NAME = "lesion-pipeline"
GCS_KEY_MOUNT = "/var/secrets/gcs"
GCS_KEY_FILE = "key.json"
# Secret key -> environment variable MLflow's client reads for basic auth.
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


@dataclass(frozen=True)
class StepPolicy:
    network: bool  # reads the data source or talks to MLflow: retried with backoff
    cacheable: bool  # outputs depend only on its inputs, so KFP may reuse them
    mlflow: bool  # needs the MLflow credentials


# Keyed like Ops and cluster.resources. Never cached: list_source (its job is to look at the
# source now), the gate (the champion moves between runs), train and evaluate (each run
# logs in MLflow), register (the champion moves) and report (it logs the data reports). Ingest
# shards are cached only while the source lists the same files. ingest_merge reads the source
# for the report's previews only, and a failed read there is a "[no preview]", never a failure
# of the step: nothing for a retry to fix.
STEP_POLICIES = {
    "list_source": StepPolicy(network=True, cacheable=False, mlflow=False),
    "ingest_shard": StepPolicy(network=True, cacheable=True, mlflow=False),
    "ingest_merge": StepPolicy(network=False, cacheable=True, mlflow=False),
    "retrain_gate": StepPolicy(network=True, cacheable=False, mlflow=True),
    "split": StepPolicy(network=False, cacheable=True, mlflow=False),
    "normalize_shard": StepPolicy(network=True, cacheable=True, mlflow=False),
    "normalize_gather": StepPolicy(network=False, cacheable=True, mlflow=False),
    "augment": StepPolicy(network=False, cacheable=True, mlflow=False),
    "train": StepPolicy(network=True, cacheable=False, mlflow=True),
    "evaluate": StepPolicy(network=True, cacheable=False, mlflow=True),
    "register": StepPolicy(network=True, cacheable=False, mlflow=True),
    "report": StepPolicy(network=True, cacheable=False, mlflow=True),
}


@dataclass
class Ops:
    list_source: Callable
    ingest_shard: Callable
    ingest_merge: Callable
    retrain_gate: Callable
    split: Callable
    normalize_shard: Callable
    normalize_gather: Callable
    augment: Callable
    train: Callable
    evaluate: Callable
    register: Callable
    report: Callable


def component_ops(cfg: Config) -> Ops:
    """Every step as a KFP component on our images (kfp is already in them)."""

    def op(func: Callable, image: str) -> Callable:
        return dsl.component(func, base_image=image, install_kfp_package=False)

    cpu, gpu = cfg.images.cpu, cfg.images.gpu
    return Ops(
        list_source=op(list_source_step, cpu),
        ingest_shard=op(ingest_shard_step, cpu),
        ingest_merge=op(ingest_merge_step, cpu),
        retrain_gate=op(retrain_gate_step, cpu),
        split=op(split_step, cpu),
        normalize_shard=op(normalize_shard_step, cpu),
        normalize_gather=op(normalize_gather_step, cpu),
        augment=op(augment_step, cpu),
        train=op(train_step, gpu),
        evaluate=op(evaluate_step, cpu),
        register=op(register_step, cpu),
        report=op(report_step, cpu),
    )


def configure_task(task: PipelineTask, step: str, cluster: ClusterConfig) -> PipelineTask:
    """Pod resources, caching, retries and credentials of one step, from the config."""
    policy = STEP_POLICIES[step]
    res = getattr(cluster.resources, step)
    task.set_display_name(step.replace("_", "-"))
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    task.set_caching_options(cluster.caching and policy.cacheable)
    if policy.network and cluster.retries:
        task.set_retry(cluster.retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0)
    if cluster.secrets.gcs:
        # Every pod: its step may read gs:// data, and KFP's launcher in the same pod moves
        # the step's artifacts to and from the GCS pipeline_root.
        kubernetes.use_secret_as_volume(task, secret_name=cluster.secrets.gcs, mount_path=GCS_KEY_MOUNT)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_MOUNT}/{GCS_KEY_FILE}")
    if policy.mlflow and cluster.secrets.mlflow:
        kubernetes.use_secret_as_env(task, secret_name=cluster.secrets.mlflow, secret_key_to_env=MLFLOW_SECRET_KEYS)
    return task


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


def create_pipeline(cfg: Config) -> Callable:
    ops = component_ops(cfg)
    data, augment, train, evaluate = (cfg.data.to_dict(), cfg.augment.to_dict(), cfg.train.to_dict(),
                                      cfg.evaluate.to_dict())
    experiment, model_name = cfg.mlflow.experiment, cfg.mlflow.model_name

    def step(name: str, **kwargs) -> PipelineTask:
        return configure_task(getattr(ops, name)(**kwargs), name, cfg.cluster)

    @dsl.pipeline(name=PIPELINE_NAME, pipeline_root=cfg.cluster.pipeline_root or None,
                  description="Dermoscopic images -> trained, evaluated, registered skin-lesion classifier (MLflow)")
    def lesion_pipeline(data_uri: str = cfg.data.source, tracking_uri: str = cfg.mlflow.tracking_uri,
                        force_retrain: bool = False, checkpoint_root: str = "", kfp_ui_url: str = "",
                        local_run_dir: str = "") -> str:
        run = {"tracking_uri": tracking_uri, "kfp_run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
               "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        # Where a reviewer finds the run besides MLflow: its KFP page, or its local folder.
        origin = {"kfp_ui_url": kfp_ui_url, "local_run_dir": local_run_dir}
        listing = step("list_source", data_uri=data_uri, data=data)
        with dsl.ParallelFor(items=list(range(cfg.data.ingest_shards)), name="ingest-shards") as ingest_index:
            ingest_shard = step("ingest_shard", data_uri=data_uri, data=data, shard_index=ingest_index,
                                source_listing=listing.output)
        manifest = step("ingest_merge", shards=dsl.Collected(ingest_shard.outputs["shard"]),
                        data=data).outputs["manifest"]
        gate = step("retrain_gate", manifest=manifest, model_name=model_name, experiment=experiment,
                    run_params=cfg.flat_params(), force_retrain=force_retrain, **run)

        with dsl.If(gate.outputs["decision"] == TRAIN, name="retrain"):
            splits = step("split", manifest=manifest, data=data).outputs["splits"]
            with dsl.ParallelFor(items=list(range(cfg.data.num_shards)), name="normalize-shards") as shard_index:
                shard = step("normalize_shard", splits=splits, data=data, shard_index=shard_index)
            normalized = step("normalize_gather", shards=dsl.Collected(shard.outputs["shard"]), splits=splits,
                              manifest=manifest, data=data).outputs["normalized"]
            augmented = step("augment", normalized=normalized, augment=augment, seed=cfg.data.seed).outputs["augmented"]
            trained = request_gpu(step("train", normalized=normalized, augmented=augmented, train=train,
                                       melanoma_class=cfg.evaluate.melanoma_class,
                                       data_fingerprint=gate.outputs["fingerprint"], checkpoint_root=checkpoint_root,
                                       experiment=experiment, **run),
                                  cfg.cluster.gpu)
            evaluation = step("evaluate", model=trained.outputs["model"], normalized=normalized, evaluate=evaluate,
                              experiment=experiment, **run).outputs["evaluation"]
            registered = step("register", evaluation=evaluation, normalized=normalized, evaluate=evaluate,
                              model_name=model_name, model_uri=trained.outputs["Output"],
                              data_fingerprint=gate.outputs["fingerprint"], experiment=experiment, **run, **origin)
            trained_report = step("report", gate_details=gate.outputs["details"], manifest=manifest, splits=splits,
                                  augmented=augmented, evaluation=evaluation,
                                  registration=registered.outputs["registration"], model_uri=trained.outputs["Output"],
                                  kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **origin)
        with dsl.Else(name="data-unchanged"):
            skipped_report = step("report", gate_details=gate.outputs["details"], manifest=manifest,
                                  kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **origin)
        return dsl.OneOf(trained_report.outputs["Output"], skipped_report.outputs["Output"])

    return lesion_pipeline
