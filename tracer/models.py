"""Built-in models and their deterministic synthetic data (nothing is downloaded).

Each `BuiltinModel` pairs a model with a data generator and the defaults that
`cnnviz trace --model NAME` uses: learning rate, data size, batch size, and how
many elements of each tensor are stored (summary columns always describe the
full tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .catalog import MODEL_CARDS, ModelCard


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


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998): conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120
    -> fc 84 -> fc 10 on 1x32x32 images.

    As in most modern re-implementations, ReLU and 2x2 max pooling stand in for the
    paper's scaled tanh and trainable average subsampling, and C3 connects to all six
    S2 maps (the paper used a fixed sparse connection table).
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)  # (N, 1, 32, 32) -> (N, 6, 28, 28)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # -> (N, 6, 14, 14)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # -> (N, 16, 10, 10)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # -> (N, 16, 5, 5)
        self.flatten = nn.Flatten()  # -> (N, 400)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)  # -> (N, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)  # -> (N, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, classes)  # -> (N, 10) logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc3(self.relu4(self.fc2(x)))


class SmallCNN(nn.Module):
    """A small multi-channel CNN with batch normalization and dropout on 3x16x16 images."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, padding=1)  # (N, 3, 16, 16) -> (N, 8, 16, 16)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # -> (N, 8, 8, 8)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)  # -> (N, 16, 8, 8)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # -> (N, 16, 4, 4)
        self.flatten = nn.Flatten()  # -> (N, 256)
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(16 * 4 * 4, classes)  # -> (N, 4) logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.dropout(self.flatten(x)))


# ---------------------------------------------------------------- synthetic data


def bars_4x4(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4x4 images with a bright vertical (class 0) or horizontal (class 1) bar plus noise.

    Each image is standardised to zero mean and standard deviation 2: with raw 0/1
    pixels the 2x2 kernel sees only non-negative inputs, and for many seeds
    (0 and 1 among them) the initial kernel and bias then leave every ReLU off, so
    no gradient reaches the convolution. With both signs the default seeds learn,
    and seed 1 shows a ReLU that dies during training.

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
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (x - mean) / std, y


# Seven-segment digits: which of the segments a..g each digit lights.
#    aaa
#   f   b
#    ggg
#   e   c
#    ddd
SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high], inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def digit_glyphs(samples: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, 1, size, size) seven-segment digits 0-9 and their labels.

    Each glyph gets its own box (width 10-16, height 18-26 pixels), position jitter of
    up to 3 pixels, stroke thickness 2-4, stroke brightness 0.6-1.0, and Gaussian
    pixel noise 0.15; then the whole set is standardized to mean 0 and standard
    deviation 1 (as MNIST usually is), which SGD needs to leave the initial plateau
    quickly. Labels cycle 0..9 in a seeded random order, so every batch of ten or
    more holds every digit about equally often.
    """
    gen = torch.Generator().manual_seed(seed)
    x = 0.15 * torch.randn(samples, 1, size, size, generator=gen)
    order = torch.randperm(samples, generator=gen)
    y = (order % 10).to(torch.long)
    for n in range(samples):
        w, h, t = _randint(gen, 10, 16), _randint(gen, 18, 26), _randint(gen, 2, 4)
        top = (size - h) // 2 + _randint(gen, -3, 3)
        left = (size - w) // 2 + _randint(gen, -3, 3)
        ink = 0.6 + 0.4 * float(torch.rand(1, generator=gen))
        mid = top + h // 2
        boxes = {  # segment -> (row0, row1, col0, col1), half-open
            "a": (top, top + t, left, left + w),
            "b": (top, mid + 1, left + w - t, left + w),
            "c": (mid, top + h, left + w - t, left + w),
            "d": (top + h - t, top + h, left, left + w),
            "e": (mid, top + h, left, left + t),
            "f": (top, mid + 1, left, left + t),
            "g": (mid - t // 2, mid - t // 2 + t, left, left + w),
        }
        for segment in SEGMENTS[int(y[n])]:
            r0, r1, c0, c1 = boxes[segment]
            x[n, 0, max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] += ink
    return (x - x.mean()) / x.std(), y


def bar_blob_patterns(samples: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, 3, size, size) colour images of four pattern classes and their labels.

    0: a horizontal bar, 1: a vertical bar, 2: a round blob, 3: a diagonal line; at a
    random position, thickness 2-3, in a random colour (each channel 0.3-1.0), with
    Gaussian noise 0.15 on every channel. The class is the shape, never the colour.
    """
    gen = torch.Generator().manual_seed(seed)
    x = 0.15 * torch.randn(samples, 3, size, size, generator=gen)
    y = (torch.randperm(samples, generator=gen) % 4).to(torch.long)
    rows = torch.arange(size).view(-1, 1).float()
    cols = torch.arange(size).view(1, -1).float()
    for n in range(samples):
        colour = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=gen)
        t = _randint(gen, 2, 3)
        r, c = _randint(gen, 2, size - 5), _randint(gen, 2, size - 5)
        label = int(y[n])
        if label == 0:
            mask = (rows >= r) & (rows < r + t) & (cols >= 0)
        elif label == 1:
            mask = (cols >= c) & (cols < c + t) & (rows >= 0)
        elif label == 2:
            radius = 2.0 + float(torch.rand(1, generator=gen))
            mask = (rows - r - 1) ** 2 + (cols - c - 1) ** 2 <= radius**2
        else:
            offset = _randint(gen, -4, 4)
            mask = (rows - cols - offset).abs() < t / 2 + 0.5
        x[n] += colour * mask.float()
    return x, y


# ---------------------------------------------------------------- registry


class BasicBlock(nn.Module):
    """ResNet's basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.
    The shortcut is the input itself, or a 1x1 convolution and BN where the stride or
    the channel count changes."""

    def __init__(self, channels_in: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or channels_in != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))  # (N, C_in, H, W) -> (N, C, H/s, W/s)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)  # the residual add: a functional call, explained


class ResNet18Cifar(nn.Module):
    """ResNet-18 (He et al., 2016) as it is usually adapted to 32x32 inputs: a 3x3 stem
    without max pooling, then four stages of two basic blocks; `width` is the first
    stage's channel count (64 in the paper; 16 by default here, so that a CPU traces it)."""

    def __init__(self, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            3, width, 3, padding=1, bias=False
        )  # (N, 3, 32, 32) -> (N, w, 32, 32)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, channels = [], width
        for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2  # 32 -> 32 -> 16 -> 8 -> 4
            stages.append(nn.Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out)))
            channels = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AvgPool2d(4)  # (N, 8w, 4, 4) -> (N, 8w, 1, 1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def bar_blob_patterns_32(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`bar_blob_patterns` at CIFAR's size, 3x32x32."""
    return bar_blob_patterns(samples, seed, size=32)


@dataclass(frozen=True)
class BuiltinModel(ModelCard):
    """A model card with its module class and its data generator."""

    build: Callable[[], nn.Module] = nn.Identity
    data: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] = bars_4x4  # (samples, seed)


_MODULES = {
    "seed-cnn": (SeedCNN, bars_4x4),
    "lenet5": (LeNet5, digit_glyphs),
    "small-cnn": (SmallCNN, bar_blob_patterns),
    "resnet18-cifar": (ResNet18Cifar, bar_blob_patterns_32),
}

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    name: BuiltinModel(**asdict(card), build=_MODULES[name][0], data=_MODULES[name][1])
    for name, card in MODEL_CARDS.items()
}
