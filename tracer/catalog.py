"""The built-in models' names and defaults, without torch: `cnnviz models`, the CLI's
help and option checks read them before (or without) importing torch.

`tracer.models` pairs each card with its module class and data generator.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str  # one line: the layers
    dataset: str
    lr: float = 0.1  # SGD learning rate (Adam and AdamW default to 1e-3)
    epochs: int = 3  # passes over the data
    samples: int = 1  # synthetic training samples
    batch_size: int | None = None  # None: all samples in one batch
    # Elements stored per tensor; None: every element. 5000 keeps the first sample of
    # every LeNet-5 and small-cnn activation and gradient whole (conv1.out: 6x28x28 = 4704).
    max_elements: int | None = None


MODEL_CARDS: dict[str, ModelCard] = {
    "seed-cnn": ModelCard(
        name="seed-cnn",
        description="4x4 -> Conv2d(1,1,k=2) -> ReLU -> MaxPool2d(k=2,s=1) -> Flatten -> Linear(4,2)",
        dataset="bars-4x4: 1x4x4 images with a vertical (class 0) or horizontal (class 1) bar, "
        "Gaussian noise 0.1, each image standardised to mean 0 and standard deviation 2",
    ),
    "lenet5": ModelCard(
        name="lenet5",
        description="LeNet-5 on 1x32x32, 10 classes: Conv2d(1,6,k=5) -> ReLU -> MaxPool2d(2) -> "
        "Conv2d(6,16,k=5) -> ReLU -> MaxPool2d(2) -> Flatten -> Linear(400,120) -> ReLU -> "
        "Linear(120,84) -> ReLU -> Linear(84,10) (ReLU and max pooling in place of the paper's "
        "tanh and average subsampling)",
        dataset="digit-glyphs: 1x32x32 seven-segment digits 0-9 with random box size, position "
        "jitter, stroke thickness and brightness, Gaussian noise 0.15",
        lr=0.05,
        epochs=10,
        samples=640,
        batch_size=64,
        max_elements=5000,
    ),
    "small-cnn": ModelCard(
        name="small-cnn",
        description="3x16x16, 4 classes: Conv2d(3,8,k=3,p=1) -> BatchNorm2d -> ReLU -> MaxPool2d(2) -> "
        "Conv2d(8,16,k=3,p=1) -> BatchNorm2d -> ReLU -> MaxPool2d(2) -> Flatten -> Dropout(0.25) -> "
        "Linear(256,4)",
        dataset="bars-blobs: 3x16x16 colour images of a horizontal bar, vertical bar, blob or "
        "diagonal line at random positions and colours, Gaussian noise 0.15",
        lr=0.05,
        epochs=3,
        samples=256,
        batch_size=32,
        max_elements=5000,
    ),
    "resnet18-cifar": ModelCard(
        name="resnet18-cifar",
        description="ResNet-18 for 3x32x32 (CIFAR stem: Conv2d(3,16,k=3,p=1) -> BatchNorm2d -> "
        "ReLU, no max pool), 4 stages of 2 basic blocks (conv-BN-ReLU-conv-BN + shortcut, ReLU; "
        "1x1 conv + BN shortcut where the shape changes) at widths 16/32/64/128 (a quarter of "
        "ResNet-18's, for CPU), AvgPool2d(4) -> Flatten -> Linear(128,4)",
        dataset="bars-blobs-32: 3x32x32 colour images of a horizontal bar, vertical bar, blob or "
        "diagonal line at random positions and colours, Gaussian noise 0.15",
        lr=0.05,
        epochs=1,
        samples=256,
        batch_size=32,
        # One sample of the widest activation (16x32x32) whole.
        max_elements=16384,
    ),
}
