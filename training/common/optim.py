"""Optimizer section of a recipe, the optimizer it builds, and its learning-rate schedule.

Shared by the training loops; the schedule is a pure function of the step, so resume needs no scheduler
state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class OptimSection:
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD (Nesterov)
    betas: tuple[float, ...] = (0.9, 0.98)  # AdamW
    weight_decay: float = 1e-2
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  # cosine decay to lr * min_lr_ratio at the last step
    clip_grad_norm: float = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("optim.lr must be > 0")
        if len(self.betas) != 2:
            raise ValueError("optim.betas needs two values")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")


def lr_at(step: int, total_steps: int, o: OptimSection) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at total_steps."""
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, o: OptimSection) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD; weight decay on matrices only (not on biases and norm gains)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]))
