"""The built-in training loop behind `cnnviz trace`, written against the public API.

`resolve` turns what the user asked for into a complete `TrainConfig`, filling
in the model's defaults and rejecting bad values with one-line errors before
anything is written. `train` is the loop itself; `run_builtin` runs it inside a
`Trace`, `train_untraced` without one (same seed, same numbers: the tests
compare the two bit for bit).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import click
import torch
from torch import nn

from .models import BUILTIN_MODELS, BuiltinModel
from .pipeline import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_SIZE
from .session import DEFAULT_EXPLAIN, Trace

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
ADAM_LR = 1e-3  # the default learning rate of Adam and AdamW (the models' lr is tuned for SGD)
DEFAULT_MOMENTUM = 0.9  # of --optimizer momentum
ADAMW_WEIGHT_DECAY = 0.01  # PyTorch's default for AdamW


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


SEED_MAX = 2**32 - 1  # torch's CPU generator uses a seed's low 32 bits
DEFAULT = _Default()  # "the model's default", where None already means something (no bound)


@dataclass
class TrainConfig:
    """A complete, validated training configuration (see `resolve`)."""

    model: str  # a key of BUILTIN_MODELS
    seed: int  # seeds the initial weights and the synthetic data
    lr: float  # learning rate
    epochs: int  # passes over the data
    iterations: int  # iterations run: epochs x batches, or fewer when asked
    samples: int  # synthetic training samples
    batch_size: int  # samples per iteration (the last batch of an epoch may be smaller)
    optimizer: str  # one of OPTIMIZERS
    momentum: float  # SGD momentum (0 for plain SGD; unused by Adam/AdamW)
    weight_decay: float  # L2 penalty (SGD, Adam) or decoupled decay (AdamW)
    every: int  # store every k-th iteration (1: all)
    max_elements: int | None  # elements stored per tensor; None: all of them
    layers: list[str] | None  # store tensors of these layers only; None: all


def _fail(message: str, option: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=f"'--{option}'")


def _positive_int(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"{value!r} is not a positive integer", option)
    return value


def resolve(
    *,
    model_name: str = "seed-cnn",
    seed: int = 0,
    lr: float | None = None,
    epochs: int | None = None,
    iterations: int | None = None,
    samples: int | None = None,
    batch_size: int | None = None,
    optimizer: str = "sgd",
    momentum: float | None = None,
    weight_decay: float | None = None,
    every: int = 1,
    max_elements=DEFAULT,
    layers: list[str] | str | None = None,
) -> TrainConfig:
    """Fill in the model's defaults and check every value (click.BadParameter: one line)."""
    if model_name not in BUILTIN_MODELS:
        raise _fail(
            f"unknown model {model_name!r}; choose from {', '.join(BUILTIN_MODELS)}", "model"
        )
    spec = BUILTIN_MODELS[model_name]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(f"{seed!r} is not an integer", "seed")
    if not 0 <= seed <= SEED_MAX:
        # torch's CPU generator keeps the low 32 bits: 2**32 would repeat seed 0.
        raise _fail(f"{seed} is not in the range 0 to 2^32 - 1 that torch's generator uses", "seed")
    if optimizer not in OPTIMIZERS:
        raise _fail(
            f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}", "optimizer"
        )
    if lr is None:
        lr = ADAM_LR if optimizer in ("adam", "adamw") else spec.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise _fail(f"{lr!r} is not a positive number", "lr")
    if momentum is not None:
        if optimizer in ("adam", "adamw"):
            raise _fail(f"momentum applies to sgd and momentum, not {optimizer}", "momentum")
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0 <= momentum < 1
        ):
            raise _fail(f"{momentum!r} is not in [0, 1)", "momentum")
    if optimizer == "momentum":
        momentum = DEFAULT_MOMENTUM if momentum is None else momentum
        if momentum == 0:
            raise _fail(
                "--optimizer momentum needs a momentum above 0 (or use --optimizer sgd)", "momentum"
            )
    momentum = float(momentum or 0.0) if optimizer in ("sgd", "momentum") else 0.0
    if weight_decay is None:
        weight_decay = ADAMW_WEIGHT_DECAY if optimizer == "adamw" else 0.0
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise _fail(f"{weight_decay!r} is not a number >= 0", "weight-decay")
    samples = _positive_int(spec.samples if samples is None else samples, "samples")
    batch_size = min(_positive_int(batch_size or spec.batch_size or samples, "batch-size"), samples)
    epochs = _positive_int(spec.epochs if epochs is None else epochs, "epochs")
    batches = math.ceil(samples / batch_size)
    if iterations is None:
        iterations = epochs * batches
    else:
        iterations = _positive_int(iterations, "iterations")
        epochs = math.ceil(iterations / batches)
    every = _positive_int(every, "every")
    if max_elements is DEFAULT:
        max_elements = spec.max_elements
    if max_elements is not None:
        max_elements = _positive_int(max_elements, "max-elements")
    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
        if not layers:
            raise _fail("give one or more layer names, separated by commas", "layers")
    if layers is not None:
        known = layer_names(spec)
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise _fail(
                f"unknown layer {unknown[0]!r} for {model_name}; choose from {', '.join(known)}",
                "layers",
            )
        layers = list(dict.fromkeys(layers))
    return TrainConfig(
        model=model_name,
        seed=seed,
        lr=float(lr),
        epochs=epochs,
        iterations=iterations,
        samples=samples,
        batch_size=batch_size,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=float(weight_decay),
        every=every,
        max_elements=max_elements,
        layers=layers,
    )


def projected_bytes(config: TrainConfig) -> int:
    """A lower bound on what a run adds to the store: per stored iteration, each
    parameter three times (before, gradient, after), bounded by max-elements, as
    float32. Activations, intermediates and steps come on top."""
    with torch.device("meta"):
        model = BUILTIN_MODELS[config.model].build()
    bound = config.max_elements
    per_iteration = sum(
        3 * 4 * (min(p.numel(), bound) if bound is not None else p.numel())
        for p in model.parameters()
    )
    stored = math.ceil(config.iterations / config.every)
    return stored * per_iteration


def layer_names(spec: BuiltinModel) -> list[str]:
    """The layer names a built-in model's tensors are stored under: its leaf modules, then the loss."""
    with torch.device("meta"):  # no memory, no random numbers drawn
        model = spec.build()
    return [
        name for name, m in model.named_modules() if name and next(m.children(), None) is None
    ] + ["loss"]


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer in ("sgd", "momentum"):
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def prepare(config: TrainConfig):
    """(model, optimizer, criterion, x, y) for a configuration, seeded."""
    spec = BUILTIN_MODELS[config.model]
    torch.manual_seed(config.seed)  # the initial weights (and dropout masks after them)
    model = spec.build()
    optimizer = make_optimizer(config, model.parameters())
    x, y = spec.data(config.samples, config.seed)
    return model, optimizer, nn.CrossEntropyLoss(), x, y


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    run: Trace | None = None,
    after_iteration: Callable[[], None] | None = None,
) -> list[float]:
    """The loop: mini-batches in a fixed order, `config.iterations` of them. Returns the losses."""
    losses = []
    index = 0
    while index < config.iterations:
        for start in range(0, config.samples, config.batch_size):
            if index == config.iterations:
                break
            xb, yb = x[start : start + config.batch_size], y[start : start + config.batch_size]
            with run.iteration() if run is not None else contextlib.nullcontext():
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
            losses.append(loss.item())
            index += 1
            if after_iteration is not None:
                after_iteration()
    return losses


@contextmanager
def one_torch_thread():
    """Built-in runs use one torch thread: the order of a float reduction depends on how
    many threads share it, so this makes a seed's numbers independent of the core count
    (LeNet-5's loss after 100 iterations is 0.952 with one thread, 1.049 with two).

    NumPy's BLAS is pinned to one thread too (threadpoolctl): with its default of one
    thread per core, the explainers' matrix products competed with the training
    thread for the same cores, cost about 28% more CPU and gave 7x outliers."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def train_untraced(config: TrainConfig) -> list[float]:
    """The same run without tracing (the baseline that tracing must not change)."""
    with one_torch_thread():
        model, optimizer, criterion, x, y = prepare(config)
        return train(model, optimizer, criterion, x, y, config)


def run_builtin(
    *,
    model_name: str = "seed-cnn",
    seed: int = 0,
    name: str | None = None,
    db=None,
    progress: bool = False,
    strict: bool = False,
    explain: str = DEFAULT_EXPLAIN,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    queue_bytes: int | str = DEFAULT_QUEUE_BYTES,
    full_check: bool = False,
    worker: str = "thread",
    **options,
) -> Trace:
    """Train a built-in model and trace it; returns the finished Trace.

    `options` are those of `resolve` (lr, epochs, iterations, samples, batch_size,
    optimizer, momentum, weight_decay, every, max_elements, layers); each defaults
    to the model's own. `explain`, `queue_size`, `queue_bytes` and `full_check` are those
    of `Trace`.
    """
    config = resolve(model_name=model_name, seed=seed, **options)
    spec = BUILTIN_MODELS[config.model]
    model, optimizer, criterion, x, y = prepare(config)
    run = Trace(
        model,
        optimizer,
        criterion,
        db=db,
        name=name or f"{config.model}-seed{config.seed}",
        seed=config.seed,
        model_name=config.model,
        dataset=f"{spec.dataset}; {config.samples} sample(s), batch size {config.batch_size}",
        config=asdict(config),
        every=config.every,
        max_elements=config.max_elements,
        layers=config.layers,
        strict=strict,
        explain=explain,
        queue_size=queue_size,
        queue_bytes=queue_bytes,
        worker=worker,
        full_check=full_check,
    )
    show_bar = progress and config.iterations > 10
    rows: list[str] = []

    def record_row() -> None:
        # The worker stores iterations behind the loop: print every row stored since.
        while len(rows) < len(run.rows):
            rows.append(_row(run.rows[len(rows)]))
            if progress and not show_bar:
                if len(rows) == 1:
                    click.echo(HEADER)
                click.echo(rows[-1])

    with one_torch_thread(), run:
        if show_bar:
            with click.progressbar(length=config.iterations, label="tracing") as bar:

                def tick() -> None:
                    record_row()
                    bar.update(1)

                train(model, optimizer, criterion, x, y, config, run, tick)
        else:
            train(model, optimizer, criterion, x, y, config, run, record_row)
    record_row()  # the iterations the worker stored after the loop ended
    if show_bar:
        click.echo(HEADER)
        for line in rows if len(rows) <= 12 else [*rows[:5], f"{'...':>4}", *rows[-5:]]:
            click.echo(line)
    return run


HEADER = (
    f"{'iter':>4}  {'loss':>10}  {'acc':>5}  {'verified steps':>14}  {'max |ours - torch|':>18}"
)


def _row(row: tuple) -> str:
    index, loss, accuracy, checked, ok, worst = row
    acc = "" if accuracy is None else f"{accuracy:.2f}"
    return f"{index:>4}  {loss:>10.6f}  {acc:>5}  {f'{ok}/{checked}':>14}  {worst:>18.2e}"
