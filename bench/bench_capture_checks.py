"""What recognising custom autograd Functions costs the capture (the per-call check
for a running Function forward and the grad_fn check on call inputs).

Three variants interleaved in one process, per round: the training step with the
hooks attached but inactive ("plain"), captured, and captured with those two checks
switched off ("unchecked"). Prints, per model, the
ratios captured/untraced and captured/captured-without-checks (min and median).

    python bench/bench_capture_checks.py [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer.capture import Capture  # noqa: E402
from tracer.models import LeNet5  # noqa: E402
from tracer.train import one_torch_thread  # noqa: E402


class TinyResNet(nn.Module):
    """The README's example: calls written in forward (functional interception)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(4, 4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 4, kernel_size=3, padding=1),
        )
        self.head = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        x = F.max_pool2d(x, 2)
        return self.head(torch.flatten(x, 1))


def step(model, optimizer, criterion, x, y):
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench(name, model, x, y, rounds):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    capture = Capture(model, optimizer, criterion).attach()
    inside, outputs = Capture._inside_function, Capture._function_outputs

    def captured():
        capture.start()
        step(model, optimizer, criterion, x, y)
        capture.finish()

    def unchecked():
        Capture._inside_function = lambda self: False
        Capture._function_outputs = lambda self, tensors: None
        try:
            captured()
        finally:
            Capture._inside_function, Capture._function_outputs = inside, outputs

    def plain():
        capture.active = False
        step(model, optimizer, criterion, x, y)

    for fn in (plain, captured, unchecked):  # warm up
        fn()
    times = {"plain": [], "captured": [], "unchecked": []}
    for _ in range(rounds):
        times["plain"].append(timed(plain))
        times["captured"].append(timed(captured))
        times["unchecked"].append(timed(unchecked))
    capture.detach()
    for a, b in (("captured", "plain"), ("captured", "unchecked")):
        ratios = [p / q for p, q in zip(times[a], times[b], strict=True)]
        print(
            f"{name}: {a}/{b} min {min(ratios):.3f} median {statistics.median(ratios):.3f} "
            f"({a} median {statistics.median(times[a]) * 1e3:.1f} ms)"
        )


def main(rounds: int = 15) -> None:
    torch.manual_seed(0)
    with one_torch_thread():
        bench(
            "lenet5 batch 64",
            LeNet5(),
            torch.randn(64, 1, 32, 32),
            torch.randint(0, 10, (64,)),
            rounds,
        )
        bench(
            "tiny-resnet batch 32",
            TinyResNet(),
            torch.randn(32, 1, 8, 8),
            torch.randint(0, 2, (32,)),
            rounds,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
