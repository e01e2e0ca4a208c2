"""The KFP v2 pipeline: one factory, ``create_pipeline(cfg)``, used by every runner
(local, compile, submit, schedule), so the pipeline that runs on a laptop is the one
that runs on the cluster."""

from dataclasses import dataclass
from typing import Callable

from kfp import dsl

from components.augment import augment_step
from components.evaluate import evaluate_step
from components.ingest import ingest_step
from components.normalize import normalize_step
from components.split import split_step
from components.train import train_step
from pipeline.config import Config

PIPELINE_NAME = "lesion-pipeline"


@dataclass
class Ops:
    ingest: Callable
    split: Callable
    normalize: Callable
    augment: Callable
    train: Callable
    evaluate: Callable


def component_ops(cfg: Config) -> Ops:
    """The six steps as KFP components on our images (kfp is already in them)."""

    def op(func: Callable, image: str) -> Callable:
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return Ops(
        ingest=op(ingest_step, cfg.images.cpu),
        split=op(split_step, cfg.images.cpu),
        normalize=op(normalize_step, cfg.images.cpu),
        augment=op(augment_step, cfg.images.cpu),
        train=op(train_step, cfg.images.gpu),
        evaluate=op(evaluate_step, cfg.images.cpu),
    )


def create_pipeline(cfg: Config) -> Callable:
    ops = component_ops(cfg)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Dermoscopic images -> trained, evaluated, registered skin-lesion classifier (MLflow)")
    def lesion_pipeline(data_uri: str = cfg.data.source, config: dict = cfg.to_dict(),
                        tracking_uri: str = cfg.mlflow.tracking_uri) -> dsl.Artifact:
        ingest = ops.ingest(data_uri=data_uri, config=config).set_display_name("ingest")
        split = ops.split(manifest=ingest.outputs["manifest"], config=config).set_display_name("split")
        normalize = ops.normalize(splits=split.outputs["splits"], manifest=ingest.outputs["manifest"],
                                  config=config).set_display_name("normalize")
        augment = ops.augment(normalized=normalize.outputs["normalized"], config=config).set_display_name("augment")
        train = ops.train(normalized=normalize.outputs["normalized"], augmented=augment.outputs["augmented"],
                          config=config, tracking_uri=tracking_uri, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                          kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).set_display_name("train")
        evaluate = ops.evaluate(model=train.outputs["model"], normalized=normalize.outputs["normalized"],
                                manifest=ingest.outputs["manifest"], splits=split.outputs["splits"],
                                augmented=augment.outputs["augmented"], config=config, tracking_uri=tracking_uri,
                                kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                model_uri=train.outputs["Output"]).set_display_name("evaluate")
        return evaluate.outputs["summary"]

    return lesion_pipeline
