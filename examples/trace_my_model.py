"""Trace your own model: wrap an ordinary PyTorch training loop in `trace(...)`.

Run:  python examples/trace_my_model.py runs.db
Then: cnnviz runs --db runs.db
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

from tracer import trace


class TinyResNet(nn.Module):
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
        x = torch.relu(x + self.block(x))  # a residual add, written as plain Python
        x = F.max_pool2d(x, 2)
        return self.head(torch.flatten(x, 1))


torch.manual_seed(0)
x = torch.randn(32, 1, 8, 8)
y = (x[:, 0, :4].mean(dim=(1, 2)) > x[:, 0, 4:].mean(dim=(1, 2))).long()  # top half brighter?

model = TinyResNet()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
criterion = nn.CrossEntropyLoss()
db = sys.argv[1] if len(sys.argv) > 1 else "runs.db"

with trace(model, optimizer, criterion, db=db, name="tiny-resnet", max_elements=5000) as t:
    for step in range(5):
        with t.iteration():  # your loop, unchanged, inside this block
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        print(f"iteration {step + 1}: loss {loss.item():.4f}")

print(f"run {t.run_id} stored in {db}")
