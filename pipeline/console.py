"""What a person sees while ``lesionpipe run`` works: one line when a task starts and
when it ends (with its duration), one line per training epoch, the few lines that
matter (the retraining gate's decision, a resumed training, the registered model), and
for a failed task the end of its log and its cause. Everything the KFP local runner
prints goes, whole, to ``pipeline.log`` and each task's own ``logs/<task>.log`` in the
run's folder; ``--verbose`` shows it all on the console as well.

The local runner prints through ``sys.stdout`` from one thread per running task
(normalize's shards run side by side), so a line belongs to the task its thread is
running.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from components.training.callbacks import EPOCH_LINE

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
# Lines of a step worth a person's attention (printed by our step wrappers).
_NOTABLE = re.compile(
    r"^(retraining gate: |resuming training from epoch|training finished earlier|registered |"
    r"ensemble member |train\.max_train_minutes|warning: )"
)
_ERROR = re.compile(r"^error: (.+)$")
FAILED_TAIL_LINES = 15


def _short(name: str) -> str:
    return name.removesuffix("-step").replace("-", "_")


class RunConsole(io.TextIOBase):
    """A ``sys.stdout`` stand-in for the duration of a local run."""

    def __init__(
        self,
        run_dir: Path,
        total_tasks: int,
        echo: Callable[[str], None],
        verbose: bool = False,
        terminal: TextIO | None = None,
        pipeline_root: Path | None = None,
    ):
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.total = total_tasks
        self.echo = echo
        self.verbose = verbose
        self.terminal = terminal
        self._full = open(run_dir / "pipeline.log", "a", encoding="utf-8")
        # Reentrant: a line shown may come back through this stream (the runner's print).
        self._lock = threading.RLock()
        self._pending: dict[int, str] = {}
        self._task_of_thread: dict[int, str] = {}
        self._task_logs: dict[str, TextIO] = {}
        self._started: dict[str, tuple[int, float]] = {}
        self._finished: set[str] = set()
        self._causes: dict[str, str] = {}
        self.failures: list[str] = []
        self._done = False
        # This run's folder under pipeline_root, from the first path into it that the runner
        # prints (each task's executor input): other runs of the same output folder have
        # theirs beside it, so the newest folder there need not be this run's.
        self.pipeline_run: Path | None = None
        self._pipeline_root = pipeline_root
        self._run_folder = re.compile(re.escape(str(pipeline_root)) + r"/([^/\"']+)/") if pipeline_root else None

    # ---- the stream ------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._done:  # a logging handler made during the run may outlive it
            return self.terminal.write(text) if self.terminal is not None else len(text)
        if self.verbose and self.terminal is not None:
            self.terminal.write(text)
        thread = threading.get_ident()
        with self._lock:
            buffered = self._pending.pop(thread, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self._pending[thread] = rest
            for line in lines:
                self._line(thread, _ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        if self._done:
            return
        # Under the lock: the runner's logging flushes from one task's thread while another
        # task's thread opens its log (the dict of logs may not change while we go through it).
        with self._lock:
            self._full.flush()
            for log in self._task_logs.values():
                log.flush()
        if self.terminal is not None:
            self.terminal.flush()

    def finish(self) -> None:
        """Close the log files. The stream itself stays open, passing what it is still
        given to the terminal: a handler that a library bound to sys.stdout during the run
        may write to it later."""
        if self._done:
            return
        self.flush()
        self._done = True
        self._full.close()
        for log in self._task_logs.values():
            log.close()

    # ---- lines -----------------------------------------------------------------------
    def _line(self, thread: int, line: str) -> None:
        self._full.write(line + "\n")
        if self.pipeline_run is None and self._run_folder and (folder := self._run_folder.search(line)):
            self.pipeline_run = self._pipeline_root / folder[1]
        if started := _STARTED.search(line):
            self._task_started(thread, started[1])
            return
        if finished := _FINISHED.search(line):
            self._task_finished(thread, finished[1], finished[2])
            return
        task = self._task_of_thread.get(thread)
        if task is None:
            return
        self._task_logs[task].write(line + "\n")
        self._step_line(task, line.strip())

    def _step_line(self, task: str, text: str) -> None:
        # search, not match: a stream's carriage-return residue may come before the line.
        if epoch := EPOCH_LINE.search(text):
            self._say(f"        {epoch[1]}")
        elif _NOTABLE.match(text):
            self._say(f"        {text}")
        elif error := _ERROR.match(text):
            self._causes[task] = error[1]

    def _task_started(self, thread: int, task: str) -> None:
        self._close_finished_siblings(task)
        # Shards of one step share its task name: the second one's log is <step>_2.log.
        same = sum(1 for uid in self._started if uid.split("#")[0] == task)
        uid = f"{task}#{same + 1}" if same else task
        self._task_of_thread[thread] = uid
        number = len(self._started) + 1
        self._task_logs[uid] = open(self.logs / f"{self._log_name(uid)}.log", "a", encoding="utf-8")
        self._started[uid] = (number, time.monotonic())
        self._say(f"[{number}/{self.total}] {_short(task)} ...")

    def _close_finished_siblings(self, starting: str) -> None:
        """The local runner sometimes drops the "finished" line of one of a ParallelFor's
        shards that end together. It starts a task only when those before it succeeded,
        so a shard still open when another step starts has finished too."""
        for uid in [uid for uid in self._started if uid not in self._finished]:
            step = uid.split("#")[0]
            if step != starting and any(done.split("#")[0] == step for done in self._finished):
                self._task_finished(None, step, "SUCCESS", uid)

    def _task_finished(self, thread: int | None, task: str, status: str, uid: str | None = None) -> None:
        uid = uid or self._task_of_thread.get(thread, task)
        self._finished.add(uid)
        number, began = self._started.get(uid, (0, time.monotonic()))
        seconds = time.monotonic() - began
        if status == "SUCCESS":
            self._say(f"[{number}/{self.total}] {_short(task)}  {seconds:.1f} s")
            return
        self.failures.append(uid)
        self._task_logs[uid].flush()
        log = self.logs / f"{self._log_name(uid)}.log"
        tail = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()][-FAILED_TAIL_LINES:]
        self._say(f"[{number}/{self.total}] {_short(task)}  FAILED after {seconds:.1f} s; the end of its log:")
        for line in tail:
            self._say(f"    | {line.strip()[:200]}")

    @staticmethod
    def _log_name(uid: str) -> str:
        task, _, copy = uid.partition("#")
        return _short(task) + (f"_{copy}" if copy else "")

    def _say(self, text: str) -> None:
        if not self.verbose:
            self.echo(text)

    def failure(self) -> str:
        """The first failed task's cause in words, and where its whole log is."""
        if not self.failures:
            return ""
        task, cause = self.failed_task()
        return f"{task} failed: {cause} (full log: {self.logs / (task + '.log')})"

    def failed_task(self) -> tuple[str, str]:
        """The first failed task's name and its cause ("", "" when none failed)."""
        if not self.failures:
            return "", ""
        uid = self.failures[0]
        return self._log_name(uid), self._causes.get(uid, "it ended with an error (see its log)")
