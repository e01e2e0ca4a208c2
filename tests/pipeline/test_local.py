"""The whole pipeline through the real KFP local runner on tiny generated data, with
MLflow on a local SQLite store (the default) and on a real tracking server (where the
evaluate and register steps' outputs are checked)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import RunConfig
from pipeline.local import run_local
from tests.helpers import write_class_folder
from tests.helpers.images import jpeg_bytes, lesion

LESIONPIPE = str(Path(sys.executable).parent / "lesionpipe")
TINY = [
    "data.synthetic_images_per_class=8",
    "data.synthetic_image_size=48",
    "data.image_size=32",
    "train.epochs=1",
    "train.batch_size=8",
    "data.num_shards=1",
    "data.ingest_partitions=1",
]


def check_run(summary: dict, n_classes: int) -> None:
    """What every finished pipeline run must show in summary.json and in MLflow."""
    data = summary["data"]
    assert data["files_found"] == data["ingested"] + data["quarantined"] + data["ignored"]
    assert data["train_images"] + data["val_images"] + data["test_images"] == data["ingested"]
    m = summary["metrics"]
    # The figures follow from the confusion matrix (rows: true classes) of every test image.
    matrix = np.array(m["confusion_matrix"])
    assert matrix.shape == (n_classes, n_classes) and matrix.sum() == m["n"] == data["test_images"]
    assert m["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    present = matrix.sum(axis=1) > 0
    recalls = np.diag(matrix)[present] / matrix.sum(axis=1)[present]
    assert m["balanced_accuracy"] == pytest.approx(recalls.mean())
    assert [m["per_class_recall"][c] for c, shown in zip(m["classes"], present) if shown] == pytest.approx(recalls)
    for key in ("accuracy", "balanced_accuracy"):  # each with an interval around it
        low, high = m["intervals"]["values"][key]
        assert low <= m[key] <= high
    assert "melanoma_auc" in m

    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["kfp.run_name"].startswith("lesion-pipeline")
    assert run.info.run_name == run.data.tags["kfp.run_name"]
    assert run.data.params["train.model"] == "seed_cnn"
    assert run.data.metrics["test_accuracy"] == pytest.approx(m["accuracy"])
    assert run.data.metrics["data_ingested"] == data["ingested"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1  # per-epoch training metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} >= {"data/report.json", "data/report.html"}

    registered = summary["registered_model"]
    version = client.get_model_version(registered["name"], registered["version"])
    assert version.run_id == run.info.run_id

    mlflow.set_tracking_uri(summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(summary["model_uri"])
    assert model.metadata.get_input_schema().input_names() == ["image", "uri"]  # it takes images
    answers = model.predict(pd.DataFrame({"image": [jpeg_bytes(lesion(i)) for i in range(3)]}))
    probs = answers[[c for c in answers.columns if c.startswith("p_")]].to_numpy(dtype=float)
    assert probs.shape == (3, n_classes) and list(answers["error"]) == [""] * 3
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def check_demo_cli_run(proc: subprocess.CompletedProcess, tmp_path: Path, epochs: int) -> None:
    """What a finished ``lesionpipe run --config configs/demo.yaml --output-dir out`` in
    ``tmp_path`` must show: on the console, in summary.json, in the default SQLite MLflow
    store and the registry, with every SYNTHETIC flag."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "latest" / "summary.json").read_text())
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert summary["data"]["synthetic"] is True
    assert summary["data"]["files_found"] == 4 * 8
    check_run(summary, n_classes=4)
    # The pipeline's Markdown output leads to the MLflow run; the CLI says where to look.
    link = next(Path(summary["pipeline_run_dir"]).glob("report-step/mlflow_run")).read_text()
    assert summary["mlflow_run_id"] in link
    assert "summary.json" in proc.stdout and "lesionpipe ui --tracking-uri" in proc.stdout
    assert "(SYNTHETIC data)" in proc.stdout
    # A console a person reads: a line as each task starts and ends, one per epoch; the
    # rest in the run's logs.
    console = proc.stderr.splitlines()
    assert len(console) + len(proc.stdout.splitlines()) <= 100
    assert "[1/13] list_source ..." in console and any(re.match(r"\[5/13\] split  \d+\.\d s$", c) for c in console)
    assert any(re.match(rf" +epoch {epochs}/{epochs}  loss [\d.]+  val_loss", c) for c in console)
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "out" and (run_dir / "logs" / "train.log").is_file()
    assert "executor_input" in (run_dir / "pipeline.log").read_text()  # everything KFP printed is kept
    # The MLflow run's description: the verdict in words, test metrics first, flagged
    # SYNTHETIC, with the local run's folder; the experiment is a model-training one.
    store = MlflowClient(summary["tracking_uri"])
    note = store.get_run(summary["mlflow_run_id"]).data.tags["mlflow.note.content"]
    assert note.startswith("Test metrics (") and "Verdict: **" in note and "**SYNTHETIC data**" in note
    assert f"Local run folder: `{run_dir}`" in note and "Kubeflow Pipelines run" not in note
    assert store.get_experiment_by_name("lesion-demo").tags["mlflow.experimentKind"] == "custom_model_development"
    # 8 images a class leave 1-2 per class in validation and test: below the default
    # warning threshold, said on the console, in the summary, the run's tag and description.
    assert summary["warnings"] and all(w.startswith("class ") for w in summary["warnings"])
    assert any(re.match(r" +warning: class \w+ has few images after quarantine and split", c) for c in console)
    assert f"warning: {summary['warnings'][0]}" in proc.stdout
    tags = store.get_run(summary["mlflow_run_id"]).data.tags
    assert tags["data.class_size_warnings"].splitlines() == summary["warnings"]
    assert f"Warning: {summary['warnings'][0]}" in note
    # The model is flagged SYNTHETIC wherever it goes: its MLflow metadata, the train
    # step's folder, the registered version's tag and description.
    from components.scoring.inference import load_model

    assert load_model(summary["model_uri"], summary["tracking_uri"]).synthetic is True
    (info,) = Path(summary["pipeline_run_dir"]).glob("train-step/model/model_info.json")
    assert json.loads(info.read_text()) == {"image_size": 32, "resize_mode": "pad", "synthetic": True}
    version = store.get_model_version(summary["registered_model"]["name"], summary["registered_model"]["version"])
    assert version.tags["data.synthetic"] == "true" and "SYNTHETIC data" in version.description


def test_pipeline_evaluates_registers_and_gates_the_model_on_a_real_mlflow_server(tmp_path, mlflow_server):
    """The train, evaluate and register steps inside the real pipeline: KFP Metrics /
    ClassificationMetrics / HTML outputs, the report and gate in the MLflow run, the model
    registered with its alias."""
    data = write_class_folder(tmp_path / "data", classes=("melanoma", "nevus", "vascular_lesion"), per_class=8, size=40)
    model_name = f"pipeline-gate-{tmp_path.name}"
    cfg = RunConfig.load(
        "configs/demo.yaml", [*TINY, f"mlflow.model_name={model_name}", "mlflow.experiment=pipeline-evaluate-test"]
    )
    # A process of the caller's own (as the MLflow server beside a notebook, or this test
    # session's): a run that ends by itself kills none of them.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        summary = run_local(cfg, str(data), tmp_path / "out", mlflow_server)
        assert bystander.poll() is None, "the run killed a process it did not start"
    finally:
        bystander.kill()
    assert summary["tracking_uri"] == mlflow_server
    assert summary["data"]["synthetic"] is False
    assert summary["metrics"]["classes"] == ["melanoma", "nevus", "vascular_lesion"]
    assert summary["mlflow_run_url"].startswith(mlflow_server)
    check_run(summary, n_classes=3)

    assert summary["gate"]["alias"] == "champion" and summary["registered_model"]["version"] == "1"
    assert summary["metrics"]["n"] == summary["data"]["test_images"]
    evaluate_dir = Path(summary["pipeline_run_dir"]) / "evaluate-step"
    outputs = json.loads((evaluate_dir / "executor_output.json").read_text())["artifacts"]
    classification = outputs["classification"]["artifacts"][0]["metadata"]
    assert len(classification["confusionMatrix"]["rows"]) == 3
    assert 2 <= len(classification["confidenceMetrics"]) <= 200
    kfp_metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert {"balanced_accuracy", "melanoma_auc", "ece", "melanoma_sensitivity_at_90_specificity"} <= set(kfp_metrics)
    assert "Champion gate" not in (evaluate_dir / "report").read_text()  # evaluate scores; register decides
    html = (Path(summary["pipeline_run_dir"]) / "register-step" / "report").read_text()
    assert "Champion gate" in html and "CHAMPION" in html and html.count("data:image/png;base64,") >= 4

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["gate.alias"] == "champion"
    assert run.data.metrics["test_balanced_accuracy"] == summary["metrics"]["balanced_accuracy"]
    assert "val_balanced_accuracy" in run.data.metrics  # per-epoch training logs in the same run
    # The report step's dataset inputs: the source (the gate's fingerprint) and its subsets.
    inputs = {t.value: i.dataset for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert sorted(inputs) == ["source", "test", "train", "validation"]
    assert inputs["source"].digest == summary["retrain"]["fingerprint"][:12]
    assert json.loads(inputs["source"].profile)["images"] == summary["data"]["ingested"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/gate.json", "evaluation/gradcam_melanoma.png"} <= artifacts
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"


@pytest.mark.parametrize(
    "make_data, expected",
    [
        (lambda d: d / "missing", "Error: data source not found"),
        (lambda d: write_class_folder(d / "one", classes=("nevus",), per_class=4), "only one class found"),
    ],
)
def test_cli_user_mistakes_are_one_line_errors(tmp_path, make_data, expected):
    proc = subprocess.run(
        [LESIONPIPE, "run", "--data", str(make_data(tmp_path)), "--output-dir", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert expected in output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]  # the cause, in words, is the last line
    assert last.startswith("Error: ") and expected.removeprefix("Error: ") in last
    if "only one class" in expected:  # ingest wrote its report first, and says where it is
        report = re.search(r"every file's reason: (\S+report\.html)", last)
        assert report and Path(report[1]).is_file(), last


def test_the_same_command_run_again_after_sigterm_resumes_training(tmp_path):
    """SIGTERM to the CLI alone (as `timeout` or a container stop send it) mid-training:
    the run ends within seconds, KILLED, and the same command resumes from the last
    epoch. Was: a new pipeline_root/<timestamp> folder and training from epoch 1 again.
    The finished run removes its own checkpoints only: another run of the same output
    folder keeps its resume point (was: the whole checkpoints folder went). The run that
    resumes is also the suite's check of a whole CLI run (check_demo_cli_run): one
    pipeline run fewer."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, other_checkpoints = plant_another_run(tmp_path / "out", store)
    command = [
        LESIONPIPE,
        "run",
        "--config",
        str(Path("configs/demo.yaml").resolve()),
        *sum((["--set", s] for s in TINY), []),
        "--set",
        "train.epochs=8",
        "--set",
        "train.early_stopping_patience=8",
        "--output-dir",
        "out",
    ]
    killed = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def own_logs() -> list[Path]:
        return [
            log for log in (tmp_path / "out" / "checkpoints").glob("*/epochs.jsonl") if log.parent != other_checkpoints
        ]

    _wait_for(lambda: any(len(_read_or_empty(log).splitlines()) >= 2 for log in own_logs()), killed, "two epochs done")
    _stop_and_time(killed, signal.SIGTERM, tmp_path)
    assert killed.returncode == 143
    assert _mlflow_run_of(store, "lesion-demo").info.status == "KILLED"
    (log,) = own_logs()
    done_before = len(log.read_text().splitlines())

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    check_demo_cli_run(again, tmp_path, epochs=8)
    resumed = re.search(r"resuming training from epoch (\d+)", again.stdout + again.stderr)
    assert resumed and int(resumed[1]) >= done_before >= 2
    summary = json.loads((tmp_path / "out" / "latest" / "summary.json").read_text())
    epochs = [
        json.loads(line)["epoch"]
        for line in (Path(summary["pipeline_run_dir"]) / "train-step" / "model" / "epochs.jsonl")
        .read_text()
        .splitlines()
    ]
    assert sorted(set(epochs)) == list(range(8))  # every epoch logged, none lost across the kill
    assert not log.parent.exists()  # a finished run leaves no checkpoint of its own behind
    assert (other_checkpoints / "epochs.jsonl").is_file()  # nor removes another run's


ANOTHER_RUN = "lesion-pipeline-2999-01-01-00-00-00-000000"  # newer than any folder a run makes now


def plant_another_run(out: Path, tracking_uri: str) -> tuple[str, Path]:
    """What a second run of the same output folder has there while it trains: a newer
    pipeline folder, its RUNNING MLflow run and its checkpoints. A run must end only its
    own MLflow run and remove only its own checkpoints. Returns (MLflow run id, checkpoints)."""
    from components.core import tracking

    (out / "pipeline_root" / ANOTHER_RUN).mkdir(parents=True)
    run_id = tracking.pipeline_run(tracking_uri, "lesion-demo", ANOTHER_RUN, "kfp-another-run")
    checkpoints = out / "checkpoints" / "another-run-0123"
    checkpoints.mkdir(parents=True)
    (checkpoints / "epochs.jsonl").write_text('{"epoch": 0}\n')
    return run_id, checkpoints


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""


def _mlflow_run_of(tracking_uri: str, experiment: str):
    """The experiment's one MLflow run besides the planted one (plant_another_run)."""
    client = MlflowClient(tracking_uri)
    (run,) = [
        run
        for run in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        if run.info.run_name != ANOTHER_RUN
    ]
    return run


def test_a_failed_step_ends_its_mlflow_run_failed_and_the_cause_is_the_last_line(tmp_path):
    """Another run in the same output folder, newer, keeps its MLflow run RUNNING (was:
    the newest pipeline folder's run was ended FAILED, and this one stayed RUNNING)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other_run_id, other_checkpoints = plant_another_run(tmp_path / "out", store)
    proc = subprocess.run(
        [
            LESIONPIPE,
            "run",
            "--config",
            str(Path("configs/demo.yaml").resolve()),
            *sum((["--set", s] for s in TINY), []),
            "--set",
            "train.model=mobilenet_v2",
            "--set",
            "train.alpha=0.3",
            "--output-dir",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert re.fullmatch(
        r"Error: train failed: mobilenet_v2 has no alpha 0\.3 \(one of .*\) \(full log: .*train\.log\)", last
    ), last
    assert "| error: mobilenet_v2 has no alpha 0.3" in proc.stderr  # the end of the failed task's log
    run = _mlflow_run_of(store, "lesion-demo")
    assert run.info.status == "FAILED" and "no alpha 0.3" in run.data.tags["lesion.end_reason"]
    assert run.data.tags["lesion.failed_task"] == "train"  # the train step's own record, kept by the exit task
    other = MlflowClient(store).get_run(other_run_id)
    assert other.info.status == "RUNNING" and "lesion.end_reason" not in other.data.tags
    assert (other_checkpoints / "epochs.jsonl").is_file()
    assert run.data.tags["mlflow.note.content"].startswith("Verdict: **FAILED**: train failed: mobilenet_v2 has no")


def _default_sigint() -> None:
    """A shell's background job (`pytest ... &`, as CI scripts may start it) begins with
    SIGINT ignored, and Python then keeps it ignored: give the CLI a terminal's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def _stop_and_time(cli: subprocess.Popen, sent: int, tmp_path: Path) -> float:
    """Send ``sent`` to the CLI alone (not its group: `timeout`, systemd, a container stop
    do the same), check that it and every process of its run are gone within 10 s, and
    return the seconds it took to exit."""
    began = time.monotonic()
    cli.send_signal(sent)
    try:
        cli.wait(60)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    seconds = time.monotonic() - began
    print(f"{signal.Signals(sent).name} to exit: {seconds:.1f} s")
    assert seconds < 10, f"{seconds:.0f} s from {signal.Signals(sent).name} to exit"
    assert [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path) in _read_or_empty(p)] == []
    return seconds


@pytest.mark.parametrize(
    "sent, exit_status, reason",
    [
        (signal.SIGINT, 130, "interrupted (Ctrl-C)"),  # a terminal's Ctrl-C reaches the CLI first
        (signal.SIGTERM, 143, "terminated (SIGTERM)"),  # a container stopping, `timeout`, a cancelled job
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_ctrl_c_or_sigterm_ends_a_silent_step_within_seconds_and_its_mlflow_run_killed(
    tmp_path, gcs_emulator, sent, exit_status, reason
):
    """The normalize shards (a ParallelFor: two tasks on the runner's threads) wait
    silently on a source whose downloads stall. Was: "Aborted!", exit status 1, the MLflow
    run RUNNING forever (Ctrl-C, the first fix); then nothing for as long as the step
    printed nothing (a minute here; a real epoch: minutes), since the runner waits for
    its steps and the signal reached the CLI alone. Another run of the same output folder
    keeps its MLflow run RUNNING."""
    from google.cloud import storage

    from tests.helpers.fault_proxy import FaultProxy

    bucket = storage.Client().create_bucket(f"interrupt-{int(sent)}")
    for image in write_class_folder(tmp_path / "images", classes=("melanoma", "nevus"), per_class=8, size=40).rglob(
        "*.jpg"
    ):
        bucket.blob(f"images/{image.parent.name}/{image.name}").upload_from_filename(str(image))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other_run_id, _ = plant_another_run(tmp_path / "out", store)
    proxy = FaultProxy(("127.0.0.1", int(gcs_emulator.rsplit(":", 1)[1])))
    cli = subprocess.Popen(
        [
            LESIONPIPE,
            "run",
            "--config",
            str(Path("configs/demo.yaml").resolve()),
            *sum((["--set", s] for s in TINY), []),
            "--set",
            "data.num_shards=2",
            "--data",
            f"gs://{bucket.name}/images",
            "--output-dir",
            "out",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STORAGE_EMULATOR_HOST": proxy.url},
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    try:
        _wait_for(lambda: (tmp_path / "out" / "latest" / "logs" / "split.log").exists(), cli, "split started")
        # From now on each download waits two minutes: the normalize shards' reads stall.
        proxy.delay_s, proxy.delaying = 120.0, "alt=media"
        _wait_for(lambda: proxy.delayed, cli, "normalize's first read")
        time.sleep(1)
        _stop_and_time(cli, sent, tmp_path)
    finally:
        proxy.close()
    assert cli.returncode == exit_status
    run = _mlflow_run_of(store, "lesion-demo")
    assert run.info.status == "KILLED" and run.data.tags["lesion.end_reason"] == reason
    assert MlflowClient(store).get_run(other_run_id).info.status == "RUNNING"
    said = "Terminated (SIGTERM)" if sent == signal.SIGTERM else "Interrupted (Ctrl-C)"
    assert cli.stderr.read().strip().splitlines()[-1].startswith(f"{said}: the MLflow run is marked KILLED")


def test_runs_of_one_config_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    """Was: two runs that both found <config>-<time> free both made it, and the second
    failed with FileExistsError (a traceback)."""
    import threading

    from pipeline.local import _new_run_dir

    starts = threading.Barrier(8)
    made: list[Path] = []
    failed: list[BaseException] = []

    def start_a_run() -> None:
        starts.wait()
        for _ in range(50):
            try:
                made.append(_new_run_dir(tmp_path, "demo"))
            except OSError as exc:
                failed.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two steps, as processes do
    try:
        threads = [threading.Thread(target=start_a_run) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert failed == [] and len(set(made)) == 8 * 50 and all(folder.is_dir() for folder in made)
