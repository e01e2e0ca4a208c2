"""The learning rate of one training phase (train.lr_schedule).

Cosine: a linear warm-up over the first epoch (a fresh Adam's first steps move every
pretrained weight by about the full rate), then decay to 1 % of the peak. The rate is set
before every batch from the phase's progress, which is the further of two clocks: the
steps taken, and the share of the phase's wall-clock budget spent (train.max_train_minutes).
A budget that runs out before the planned epochs (a slower or a shared machine) then
still ends the phase annealed, at a low rate, instead of cut off at a high one: the
epochs get fewer, not worse."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from components.core.settings import TrainConfig

FLOOR = 0.01  # start of the warm-up and end of the decay, as a share of the peak


def cosine_rate(progress: float, peak: float, warmup: float) -> float:
    """The rate at ``progress`` (0 to 1) through a phase whose first ``warmup`` share
    warms up linearly from the floor to ``peak``, the rest decaying to the floor."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return peak * (FLOOR + (1 - FLOOR) * progress / warmup)
    decayed = (progress - warmup) / (1 - warmup) if warmup < 1 else 1.0
    return peak * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * decayed)))


def learning_rate(
    tc: TrainConfig,
    *,
    peak: float,
    first_epoch: int,
    phase_epochs: int,
    steps_per_epoch: int,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[float, list]:
    """The optimizer's initial rate and the callbacks that drive it through a phase of
    ``phase_epochs`` epochs starting at ``first_epoch``; ``deadline`` (a ``clock()``
    time) is when the phase's share of the time budget is spent, None for no budget."""
    if tc.lr_schedule != "cosine":
        return peak, []
    phase_steps = max(1, phase_epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, phase_steps // 4) / phase_steps
    return peak * FLOOR, [_cosine_callback(peak, warmup, first_epoch, phase_steps, steps_per_epoch, deadline, clock)]


def _cosine_callback(
    peak: float,
    warmup: float,
    first_epoch: int,
    phase_steps: int,
    steps_per_epoch: int,
    deadline: float | None,
    clock: Callable[[], float],
):
    import keras

    class CosineSchedule(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            # A resumed phase starts where its steps left off; the time left then
            # stretches over the progress left.
            self.started, self.start_progress, self.epoch = clock(), None, first_epoch

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            progress = ((self.epoch - first_epoch) * steps_per_epoch + batch) / phase_steps
            if self.start_progress is None:
                self.start_progress = progress
            if deadline is not None:
                spent = (clock() - self.started) / max(deadline - self.started, 1e-9)
                progress = max(progress, self.start_progress + (1 - self.start_progress) * spent)
            self.model.optimizer.learning_rate.assign(cosine_rate(progress, peak, warmup))

    return CosineSchedule()
