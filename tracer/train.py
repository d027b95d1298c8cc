"""The built-in training loop behind `cnnviz trace`, written against the public API."""

from __future__ import annotations

import math

import click
import torch
from torch import nn

from .models import BUILTIN_MODELS
from .session import Trace


def run_builtin(
    *,
    model_name: str = "seed-cnn",
    seed: int = 0,
    lr: float = 0.1,
    epochs: int = 3,
    samples: int = 1,
    batch_size: int | None = None,
    name: str | None = None,
    db=None,
    progress: bool = False,
    strict: bool = False,
) -> Trace:
    """Train a built-in model with SGD and trace every iteration; returns the finished Trace."""
    if model_name not in BUILTIN_MODELS:
        raise click.BadParameter(
            f"unknown model {model_name!r}; choose from {', '.join(BUILTIN_MODELS)}",
            param_hint="'--model'",
        )
    spec = BUILTIN_MODELS[model_name]
    batch_size = min(batch_size or samples, samples)
    torch.manual_seed(seed)  # the initial weights
    model = spec.build()
    x, y = spec.data(samples, seed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batches = math.ceil(samples / batch_size)
    total = epochs * batches
    config = dict(model=model_name, seed=seed, lr=lr, epochs=epochs, samples=samples, batch_size=batch_size)
    run = Trace(
        model,
        optimizer,
        criterion,
        db=db,
        name=name or f"{model_name}-seed{seed}",
        seed=seed,
        model_name=model_name,
        dataset=f"{spec.dataset}; {samples} sample(s), batch size {batch_size}",
        config=config,
        strict=strict,
    )
    show_bar = progress and total > 10
    with run:
        with click.progressbar(length=total, label="tracing", file=None) if show_bar else _null() as bar:
            for _epoch in range(epochs):
                for start in range(0, samples, batch_size):
                    xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                    with run.iteration():
                        optimizer.zero_grad()
                        loss = criterion(model(xb), yb)
                        loss.backward()
                        optimizer.step()
                    if progress and not show_bar:
                        _print_row(run)
                    if bar is not None:
                        bar.update(1)
        if show_bar:
            for _ in range(1):
                click.echo(f"iterations: {run.stored}, first loss {run.losses[0]:.6f}, last loss {run.losses[-1]:.6f}")
    return run


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _print_row(run: Trace) -> None:
    record = run.records[-1]
    checked = [s for s in record.steps if s.verified is not None]
    ok = sum(1 for s in checked if s.verified)
    worst = max((s.max_abs_diff for s in checked), default=0.0)
    if run.stored == 1:
        click.echo(f"{'iter':>4}  {'loss':>10}  {'acc':>5}  {'verified steps':>14}  {'max |ours - torch|':>18}")
    acc = "" if record.accuracy is None else f"{record.accuracy:.2f}"
    click.echo(f"{record.index:>4}  {record.loss:>10.6f}  {acc:>5}  {f'{ok}/{len(checked)}':>14}  {worst:>18.2e}")
    for warning in record.warnings:
        click.echo(f"      warning: {warning}", err=True)
