"""The cosine learning rate (components.training.lr_schedule): warm-up then decay over a phase's
steps, and, under a wall-clock budget, over the phase's time, so a budget that runs out
early still ends the phase at a low rate. Driven through a real Keras fit with a clock
the test advances."""

from __future__ import annotations

import numpy as np
import pytest

from components.core.settings import TrainConfig
from components.training.lr_schedule import FLOOR, cosine_rate, learning_rate

PEAK = 0.01
EPOCHS, STEPS = 4, 5  # 20 steps: a 4-step warm-up (a quarter), then the decay


def test_cosine_rate_warms_up_to_the_peak_then_decays_to_the_floor():
    assert cosine_rate(0.0, PEAK, 0.25) == pytest.approx(PEAK * FLOOR)
    assert cosine_rate(0.25, PEAK, 0.25) == pytest.approx(PEAK)
    assert cosine_rate(1.0, PEAK, 0.25) == pytest.approx(PEAK * FLOOR)
    decay = [cosine_rate(p, PEAK, 0.25) for p in np.linspace(0.25, 1.0, 30)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert cosine_rate(1.7, PEAK, 0.25) == pytest.approx(PEAK * FLOOR)  # past the end stays at the floor


def test_constant_schedule_sets_no_callbacks():
    rate, callbacks = learning_rate(
        TrainConfig(lr_schedule="constant"), peak=PEAK, first_epoch=0, phase_epochs=EPOCHS, steps_per_epoch=STEPS
    )
    assert rate == PEAK and callbacks == []


class FakeClock:
    """One second per reading."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def rates_seen(deadline: float | None, clock=None) -> list[float]:
    """The learning rate of every training step of a real fit over EPOCHS x STEPS steps."""
    import keras

    tc = TrainConfig(lr_schedule="cosine")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    initial, schedule = learning_rate(
        tc,
        peak=PEAK,
        first_epoch=0,
        phase_epochs=EPOCHS,
        steps_per_epoch=STEPS,
        deadline=deadline,
        clock=clock or FakeClock(),
    )
    model.compile(optimizer=keras.optimizers.Adam(initial), loss="mse")
    seen: list[float] = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate.numpy()))

    x = np.random.default_rng(0).normal(size=(STEPS * 8, 3)).astype("float32")
    model.fit(x, x[:, :2], batch_size=8, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=[*schedule, Record()])
    return seen


def test_without_a_budget_the_rate_follows_the_steps():
    seen = rates_seen(deadline=None)
    expected = [cosine_rate(step / (EPOCHS * STEPS), PEAK, 0.25) for step in range(EPOCHS * STEPS)]
    np.testing.assert_allclose(seen, expected, rtol=1e-5)
    assert max(seen) == pytest.approx(PEAK, rel=1e-5)


def test_a_budget_spent_early_anneals_the_rate_by_then():
    # The fake clock reads once at the start and once per step: the budget of 11 s is
    # spent at the 10th of 20 steps, where the steps alone would be at the peak's plateau.
    clock = FakeClock()
    seen = rates_seen(deadline=11.0, clock=clock)
    by_steps = [cosine_rate(step / (EPOCHS * STEPS), PEAK, 0.25) for step in range(EPOCHS * STEPS)]
    assert by_steps[9] > 0.5 * PEAK
    assert seen[9] == pytest.approx(PEAK * FLOOR, rel=1e-4)
    assert all(rate == pytest.approx(PEAK * FLOOR, rel=1e-4) for rate in seen[10:])
    # Before that the rate still warmed up to the peak and decayed, ahead of the steps
    # (the warm-up too is compressed): past the warm-up, never above the step schedule's.
    assert max(seen) == pytest.approx(PEAK, rel=0.05) and max(seen) <= PEAK * (1 + 1e-5)
    assert all(t <= s * (1 + 1e-5) for t, s in zip(seen[4:], by_steps[4:]))
