"""Trace without a `with` block, as a logger is used in a notebook or a trainer:
open the trace, mark each iteration with your own step number, close it.

Run:  python examples/open_close.py runs.db
Then: cnnviz runs --db runs.db
"""

import sys

import torch
from torch import nn

from tracer import Trace


def main(db="runs.db", steps=6, every=2, traced=True):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    t = Trace(model, optimizer, criterion, db=db, name="open-close", every=every)
    if traced:
        t.start()  # opens the run and attaches the hooks
    losses = {}
    try:
        for step in range(1, steps + 1):
            if traced:
                t.begin(step)  # your step number: the iteration's index in the store
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            if traced:
                t.end()  # every `every`-th step (1, 3, 5, ...) is explained and stored
            losses[step] = loss.item()
    except BaseException as exc:
        t.close(error=exc)  # the run is marked failed, with the reason
        raise
    t.close()  # the run is complete; the model has no hooks left
    return t, model, losses


if __name__ == "__main__":
    trace, _, losses = main(sys.argv[1] if len(sys.argv) > 1 else "runs.db")
    for step, loss in losses.items():
        print(f"step {step}: loss {loss:.4f}")
    print(f"run {trace.run_id} stored {trace.stored} iterations")
