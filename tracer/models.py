"""Built-in models and their deterministic synthetic data (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class SeedCNN(nn.Module):
    """The starting point: 4x4 image -> Conv2d(k=2) -> ReLU -> MaxPool2d(k=2, s=1)
    -> Flatten -> Linear(4, 2); trained with CrossEntropyLoss."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size=2, padding=0)  # (N, 1, 4, 4) -> (N, 1, 3, 3)
        self.relu = nn.ReLU()  # (N, 1, 3, 3)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1)  # (N, 1, 3, 3) -> (N, 1, 2, 2)
        self.flatten = nn.Flatten()  # (N, 1, 2, 2) -> (N, 4)
        self.fc = nn.Linear(4, 2)  # (N, 4) -> (N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


def bars_4x4(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4x4 images with a bright vertical (class 0) or horizontal (class 1) bar plus noise.

    Deterministic in `seed`; class labels alternate so every batch has both when N > 1.
    """
    gen = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(samples, 1, 4, 4, generator=gen)
    y = torch.empty(samples, dtype=torch.long)
    for n in range(samples):
        label = (n + seed) % 2
        line = int(torch.randint(0, 4, (1,), generator=gen))
        if label == 0:
            x[n, 0, :, line] += 1.0
        else:
            x[n, 0, line, :] += 1.0
        y[n] = label
    return x, y


@dataclass
class BuiltinModel:
    name: str
    description: str
    build: Callable[[], nn.Module]
    data: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
    dataset: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "seed-cnn": BuiltinModel(
        name="seed-cnn",
        description="4x4 -> Conv2d(1,1,k=2) -> ReLU -> MaxPool2d(k=2,s=1) -> Flatten -> Linear(4,2)",
        build=SeedCNN,
        data=bars_4x4,
        dataset="bars-4x4: 1x4x4 images with a vertical (class 0) or horizontal (class 1) bar, "
        "Gaussian noise 0.1",
    ),
}
