"""A cosine learning-rate schedule stepped the way nnU-Net steps its own ``PolyLRScheduler``."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


class CosineDecayLRScheduler(LRScheduler):
    """Cosine decay from ``initial_lr`` at step 0 to ``final_lr`` at ``max_steps``, set on every parameter group:
    lr = final_lr + (initial_lr - final_lr) * (1 + cos(pi * step / max_steps)) / 2. ``step(current_step)`` as
    nnU-Net's ``PolyLRScheduler`` (nnU-Net passes the epoch); without an argument it counts calls."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, final_lr: float, max_steps: int):
        if max_steps < 1 or not 0 <= final_lr <= initial_lr:
            raise ValueError(f"need max_steps >= 1 and 0 <= final_lr <= initial_lr, got max_steps={max_steps}, "
                             f"initial_lr={initial_lr}, final_lr={final_lr}.")
        self.initial_lr, self.final_lr, self.max_steps = initial_lr, final_lr, max_steps
        self.counter = 0
        super().__init__(optimizer)

    def learning_rate(self, step: int) -> float:
        """The learning rate at ``step`` (clamped to [0, max_steps])."""
        progress = min(max(step, 0), self.max_steps) / self.max_steps
        return self.final_lr + (self.initial_lr - self.final_lr) * (1 + math.cos(math.pi * progress)) / 2

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.counter
            self.counter += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
