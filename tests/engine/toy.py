"""A tiny regression problem for engine tests: no data files, no real network."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """Item ``(index, seed)``: a fixed input per index plus seeded noise (stands in for augmentation)."""

    def __init__(self, size: int = 24) -> None:
        generator = torch.Generator().manual_seed(123)
        self.inputs = torch.randn(size, 3, 8, 8, generator=generator)
        self.targets = self.inputs.mean(dim=1, keepdim=True) * 2 - 0.5

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        noise = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.05
        return {"image": self.inputs[index] + noise, "target": self.targets[index]}


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Dropout(0.1), nn.Conv2d(8, 1, 1)
    )


def toy_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    return nn.functional.mse_loss(model(batch["image"]).float(), batch["target"]), {}
