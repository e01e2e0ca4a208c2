"""The run console (pipeline.console.RunConsole) fed the local runner's lines from the
threads that print them, as KFP's local runner does for a ParallelFor's shards."""

from __future__ import annotations

import re
import threading

from pipeline.console import RunConsole


def write_from_thread(console: RunConsole, text: str) -> None:
    thread = threading.Thread(target=console.write, args=(text,))
    thread.start()
    thread.join()


def test_a_shard_whose_finished_line_the_runner_dropped_ends_when_the_next_step_starts(tmp_path):
    shown: list[str] = []
    console = RunConsole(tmp_path, total_tasks=3, echo=shown.append)
    barrier = threading.Barrier(2)

    def shard(finished: bool) -> None:
        console.write("12:00:00.000 - INFO - Executing task 'ingest-partition-step'\n")
        barrier.wait()  # both shards run at once, each in its thread
        console.write("ingesting shard\n")
        barrier.wait()
        if finished:
            console.write("12:00:01.000 - INFO - Task 'ingest-partition-step' finished with status SUCCESS\n")

    runners = [threading.Thread(target=shard, args=(finished,)) for finished in (True, False)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert sum(1 for line in shown if re.fullmatch(r"\[\d/3\] ingest_partition  \d+\.\d s", line)) == 1

    write_from_thread(console, "12:00:02.000 - INFO - Executing task 'ingest-merge-step'\n")
    ends = [line for line in shown if re.fullmatch(r"\[\d/3\] ingest_partition  \d+\.\d s", line)]
    assert sorted(line[:5] for line in ends) == ["[1/3]", "[2/3]"]
    assert shown[-1] == "[3/3] ingest_merge ..."
    # Each shard's own lines went to its own log.
    console.finish()
    assert (tmp_path / "logs" / "ingest_partition.log").read_text().count("ingesting shard") == 1
    assert (tmp_path / "logs" / "ingest_partition_2.log").read_text().count("ingesting shard") == 1


def test_a_step_that_has_not_finished_stays_open_when_its_own_shard_starts(tmp_path):
    shown: list[str] = []
    console = RunConsole(tmp_path, total_tasks=3, echo=shown.append)
    write_from_thread(console, "Executing task 'normalize-shard-step'\n")
    write_from_thread(console, "Executing task 'normalize-shard-step'\n")
    assert shown == ["[1/3] normalize_shard ...", "[2/3] normalize_shard ..."]  # the first is not closed
    console.finish()


def test_the_run_folder_is_the_one_its_tasks_print_not_the_newest(tmp_path):
    """Two runs of one output folder share its pipeline_root: a run's own folder there is
    the one its first task's executor input names."""
    root = tmp_path / "pipeline_root"
    (root / "lesion-pipeline-2999-01-01-00-00-00-000000").mkdir(parents=True)  # another run's, newer
    console = RunConsole(tmp_path / "run", total_tasks=1, echo=lambda line: None, pipeline_root=root)
    console.write(f'"outputFile": "{tmp_path}/elsewhere/lesion-pipeline-1/list-source-step/Output"\n')
    assert console.pipeline_run is None
    console.write(f'"outputFile": "{root}/lesion-pipeline-2026-12-04-00-23-03-515534/list-source-step/Output"\n')
    console.write(f'"outputFile": "{root}/lesion-pipeline-2999-01-01-00-00-00-000000/list-source-step/Output"\n')
    assert console.pipeline_run == root / "lesion-pipeline-2026-12-04-00-23-03-515534"
    console.finish()


def test_an_epoch_line_shows_once_even_behind_carriage_return_residue(tmp_path):
    from components.training.callbacks import epoch_line

    shown: list[str] = []
    console = RunConsole(tmp_path, total_tasks=1, echo=shown.append)
    # One thread, as the runner's thread for the train task prints all its lines.
    console.write("Executing task 'train-step'\n")
    line = epoch_line(0, 14, 41.6, {"loss": 0.51234, "accuracy": 0.8, "val_loss": 0.7, "learning_rate": 3e-4})
    # What a progress bar can leave before a line in a captured stream.
    console.write("\b" * 20 + "\r            ...  " + line + "\n")
    console.write("2/2 - 3s - 1s/step - accuracy: 0.8 - loss: 0.5\n")  # Keras' own text: not ours
    console.finish()
    assert [s for s in shown if "epoch" in s] == [
        "        epoch 1/14  loss 0.512  val_loss 0.700  learning_rate 0.0003  (42 s)"
    ]


def test_flushing_while_other_tasks_start_is_safe(tmp_path):
    """Was: 'dictionary changed size during iteration' from the runner's logging, which
    flushes from one task's thread while another task's thread starts (parallel shards)."""
    console = RunConsole(tmp_path, total_tasks=100, echo=lambda line: None)
    errors: list[BaseException] = []
    starting = threading.Event()

    def flush_until_done() -> None:
        starting.wait()
        try:
            while not done.is_set():
                console.flush()
        except BaseException as exc:  # noqa: BLE001 - the failure this test looks for
            errors.append(exc)

    done = threading.Event()
    flusher = threading.Thread(target=flush_until_done)
    flusher.start()
    starting.set()
    for i in range(100):
        console.write(f"Executing task 'shard-{i}-step'\n")
    done.set()
    flusher.join()
    console.finish()
    assert errors == []
