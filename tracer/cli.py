"""The `cnnviz` command line: trace a built-in model, list runs, serve the dashboard.

Every bad argument ends with one line on stderr and exit status 2, before the
store is touched.
"""

from __future__ import annotations

import math
import sys

import click

from storage import DB_ENV_VAR, RunStore, StoreError, default_db


class PositiveFloat(click.ParamType):
    name = "positive number"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive number", param, ctx)
        return number


POSITIVE_INT = click.IntRange(min=1)
db_option = click.option(
    "--db",
    "db",
    default=None,
    metavar="PATH|URL",
    help=f"Run store: a SQLite file or a SQLAlchemy URL (default: ${DB_ENV_VAR} or ./runs.db).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnnviz")
def cli() -> None:
    """cnnviz: backpropagation with real numbers, verified against PyTorch autograd."""


@cli.command()
@click.option("--model", "model_name", default="seed-cnn", show_default=True,
              help="Built-in model to train (see `cnnviz models`).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initial weights and the synthetic data.")
@click.option("--lr", type=PositiveFloat(), default=0.1, show_default=True, help="SGD learning rate.")
@click.option("--epochs", type=POSITIVE_INT, default=3, show_default=True,
              help="Passes over the data (with the default full batch, one iteration each).")
@click.option("--samples", type=POSITIVE_INT, default=1, show_default=True,
              help="Synthetic training samples.")
@click.option("--batch-size", type=POSITIVE_INT, default=None,
              help="Samples per iteration [default: all samples, one batch].")
@click.option("--name", default=None, help="Run name [default: MODEL-seedSEED].")
@db_option
def trace(model_name, seed, lr, epochs, samples, batch_size, name, db) -> None:
    """Train a built-in model and store every step of every iteration."""
    from .train import run_builtin

    db = db or default_db()
    run = run_builtin(
        model_name=model_name,
        seed=seed,
        lr=lr,
        epochs=epochs,
        samples=samples,
        batch_size=batch_size,
        name=name,
        db=db,
        progress=True,
    )
    click.echo(f"run {run.run_id} '{run.info.name}' stored in {db}")


@cli.command()
@db_option
def runs(db) -> None:
    """List the runs in a store."""
    db = db or default_db()
    with RunStore(db) as store:
        infos = store.list_runs()
    if not infos:
        click.echo(f"no runs in {db} yet: create one with `cnnviz trace --db {db}`")
        return
    header = ("id", "name", "seed", "model", "optimizer", "lr", "status", "iters", "final loss", "started (UTC)")
    rows = [
        (
            str(r.id),
            r.name,
            "" if r.seed is None else str(r.seed),
            r.model_name,
            r.optimizer,
            "" if r.learning_rate is None else f"{r.learning_rate:g}",
            r.status,
            str(r.num_iterations),
            "" if r.final_loss is None else f"{r.final_loss:.6f}",
            r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "",
        )
        for r in infos
    ]
    click.echo(format_table(header, rows))


@cli.command()
def models() -> None:
    """List the built-in models."""
    from .models import BUILTIN_MODELS

    click.echo(format_table(("name", "layers"), [(m.name, m.description) for m in BUILTIN_MODELS.values()]))


def format_table(header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=False)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    return "\n".join(lines)


# click >= 8.2 raises this for a group called with no arguments.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors and store errors become one line and exit 2."""
    try:
        cli.main(args=argv, prog_name="cnnviz", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # bare `cnnviz`: the help text, not an error line
        click.echo(exc.ctx.get_help() if exc.ctx else "cnnviz --help", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "cnnviz"
        click.echo(f"{command}: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except StoreError as exc:
        click.echo(f"cnnviz: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("cnnviz: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("cnnviz: interrupted; committed iterations are kept", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
