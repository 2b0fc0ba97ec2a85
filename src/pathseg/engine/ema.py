"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step.

    Buffers (e.g. BatchNorm statistics) are copied, not averaged. A warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))`` keeps early averages from being dominated by
    the random initialisation in short runs.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for shadow, live in zip(self.model.parameters(), model.parameters(), strict=True):
            shadow.lerp_(live.detach().to(shadow.dtype), 1.0 - decay)
        for shadow, live in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(live)

    def counters(self) -> dict:
        """Everything but the weights, which are saved as their own safetensors file."""
        return {"decay": self.decay, "num_updates": self.num_updates}

    def load_counters(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
