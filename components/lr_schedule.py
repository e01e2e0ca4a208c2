"""The learning rate of one training phase (train.lr_schedule)."""
from __future__ import annotations

from components.settings import TrainConfig


def learning_rate(tc: TrainConfig, peak: float, phase_steps: int, steps_per_epoch: int):
    """Cosine: a linear warm-up over the first epoch (a fresh Adam's first steps move
    every pretrained weight by about the full rate), then decay to 1 % of the peak."""
    import keras

    if tc.lr_schedule == "cosine":
        warmup = min(steps_per_epoch, phase_steps // 4)
        return keras.optimizers.schedules.CosineDecay(peak * 0.01, decay_steps=max(1, phase_steps - warmup), alpha=0.01,
                                                      warmup_target=peak, warmup_steps=warmup)
    return peak
