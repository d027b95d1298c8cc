"""The `cnnviz` command line: trace a built-in model, list runs, serve the dashboard.

Every bad argument ends with one line on stderr and exit status 2, before the
store is touched.
"""

from __future__ import annotations

import contextlib
import math
import sys

import click

from storage.location import DB_ENV_VAR, NAME_MAX, StoreError, default_db

from .pipeline import DEFAULT_QUEUE_SIZE

# torch's CPU generator (and the synthetic data's) seeds a Mersenne Twister with the
# low 32 bits only: 2**32 and 0 draw the same numbers. Seeds outside are refused.
SEED_MAX = 2**32 - 1
# A trace projected to need more than this asks for --allow-large.
LARGE_RUN_BYTES = 20 * 2**30


class PositiveFloat(click.ParamType):
    name = "positive number"
    zero_allowed = False

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < 0 or (number == 0 and not self.zero_allowed):
            self.fail(f"{value!r} is not a {self.name}", param, ctx)
        return number


class NonNegativeFloat(PositiveFloat):
    name = "number >= 0"
    zero_allowed = True


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


class ByteSize(click.ParamType):
    """A size in bytes: 512MiB, 1GiB, 500MB, 100000000 (`tracer.pipeline.parse_bytes`)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        from .pipeline import parse_bytes

        try:
            return parse_bytes(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class MaxElements(click.ParamType):
    """A positive integer, or "all" for no bound."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            number = int(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither a positive integer nor 'all'", param, ctx)
        if number < 1:
            self.fail(f"{value!r} is neither a positive integer nor 'all'", param, ctx)
        return number


@cli.command()
@click.option(
    "--model",
    "model_name",
    default="seed-cnn",
    show_default=True,
    help="Built-in model to train: seed-cnn, lenet5, small-cnn or resnet18-cifar "
    "(see `cnnviz models`).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, SEED_MAX),
    default=0,
    show_default=True,
    help="Seeds the initial weights and the synthetic data: 0 to 2^32 - 1, the seeds "
    "torch's generator tells apart.",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "momentum", "adam", "adamw"]),
    default="sgd",
    show_default=True,
    help="momentum is SGD with momentum 0.9 unless --momentum says otherwise.",
)
@click.option(
    "--lr",
    type=PositiveFloat(),
    default=None,
    help="Learning rate [default: the model's (seed-cnn 0.1, the others 0.05); 0.001 for adam/adamw].",
)
@click.option(
    "--momentum", type=float, default=None, help="SGD momentum in [0, 1) (sgd and momentum only)."
)
@click.option(
    "--weight-decay",
    type=float,
    default=None,
    help="Weight decay >= 0 [default: 0; 0.01 for adamw].",
)
@click.option(
    "--epochs",
    type=POSITIVE_INT,
    default=None,
    help="Passes over the data [default: the model's; see `cnnviz models`].",
)
@click.option(
    "--iterations",
    type=POSITIVE_INT,
    default=None,
    help="Stop after this many iterations [default: epochs x batches].",
)
@click.option(
    "--samples",
    type=POSITIVE_INT,
    default=None,
    help="Synthetic training samples [default: the model's].",
)
@click.option(
    "--batch-size",
    type=POSITIVE_INT,
    default=None,
    help="Samples per iteration [default: the model's; seed-cnn: all samples].",
)
@click.option(
    "--every",
    type=POSITIVE_INT,
    default=1,
    show_default=True,
    help="Store every k-th iteration (1, 1+k, 1+2k, ...).",
)
@click.option(
    "--max-elements",
    type=MaxElements(),
    default=None,
    help="Elements stored per tensor, or 'all'; summary statistics always cover the full "
    "tensor [default: the model's: lenet5 and small-cnn 5000, seed-cnn all].",
)
@click.option(
    "--layers",
    default=None,
    metavar="NAME,NAME",
    help="Store the tensors of these layers only (model-level tensors are always stored).",
)
@click.option(
    "--explain",
    type=click.Choice(["background", "inline", "off"]),
    default="background",
    show_default=True,
    help="Where each iteration is explained and verified: in a worker while training "
    "goes on, inline on the training thread, or off (raw tensors and what `cnnviz explain` "
    "needs to explain them later).",
)
@click.option(
    "--worker",
    type=click.Choice(["thread", "process"]),
    default="thread",
    show_default=True,
    help="The worker of --explain background/off: a thread of this process, or a process "
    "of its own (the captured iterations are sent to it).",
)
@click.option(
    "--queue-size",
    type=POSITIVE_INT,
    default=DEFAULT_QUEUE_SIZE,
    show_default=True,
    help="Captured iterations that may wait for the worker before training waits for it.",
)
@click.option(
    "--queue-bytes",
    type=ByteSize(),
    default="512MiB",
    show_default=True,
    help="Host memory for captured iterations not yet written (the one being captured, "
    "those waiting, the one being written); training waits for room. An iteration larger "
    "than this is captured alone, once everything before it is written.",
)
@click.option(
    "--full-check",
    is_flag=True,
    help="Explain and check every sample of every call; by default, under --max-elements, "
    "calls whose samples are independent are explained on the samples stored only.",
)
@click.option(
    "--name",
    default=None,
    callback=lambda ctx, param, value: _check_name(value),
    help=f"Run name, up to {NAME_MAX} characters [default: MODEL-seedSEED].",
)
@click.option(
    "--allow-large",
    is_flag=True,
    help=f"Trace even when the store is projected to grow by more than "
    f"{LARGE_RUN_BYTES // 2**30} GiB.",
)
@db_option
@click.pass_context
def trace(
    ctx,
    model_name,
    seed,
    optimizer,
    lr,
    momentum,
    weight_decay,
    epochs,
    iterations,
    samples,
    batch_size,
    every,
    max_elements,
    layers,
    explain,
    worker,
    queue_size,
    queue_bytes,
    full_check,
    name,
    allow_large,
    db,
) -> None:
    """Train a built-in model and store every step of every (k-th) iteration."""
    import warnings

    from .session import TraceWarning
    from .train import DEFAULT, resolve, run_builtin

    # Every value is checked before the store is opened: a bad one costs nothing stored.
    source = ctx.get_parameter_source("max_elements")
    options = dict(
        lr=lr,
        epochs=epochs,
        iterations=iterations,
        samples=samples,
        batch_size=batch_size,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        every=every,
        max_elements=DEFAULT if source is click.core.ParameterSource.DEFAULT else max_elements,
        layers=layers,
    )
    config = resolve(model_name=model_name, seed=seed, **options)
    if not allow_large:
        from .train import projected_bytes

        size = projected_bytes(config)
        if size > LARGE_RUN_BYTES:
            raise click.BadParameter(
                f"this run would store at least {size / 2**30:,.0f} GiB "
                f"({config.iterations:,} iterations); lower --epochs/--iterations, raise --every, "
                "or pass --allow-large",
                param_hint="'--epochs'/'--iterations'",
            )
    db = db or default_db()
    with warnings.catch_warnings():
        warnings.simplefilter("always", TraceWarning)
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(
            f"warning: {message}", err=True
        )
        run = run_builtin(
            model_name=model_name,
            seed=seed,
            name=name,
            db=db,
            progress=True,
            explain=explain,
            queue_size=queue_size,
            queue_bytes=queue_bytes,
            worker=worker,
            full_check=full_check,
            **options,
        )
    click.echo(f"run {run.run_id} '{run.info.name}' stored in {db}")


def _check_name(value: str | None) -> str | None:
    if value is not None and len(value) > NAME_MAX:
        raise click.BadParameter(
            f"the name is {len(value)} characters long; at most {NAME_MAX} fit the store"
        )
    return value


@cli.command()
@db_option
@click.option(
    "--prune-stale",
    is_flag=True,
    help="Mark runs whose writer died (stale) as interrupted, then list.",
)
def runs(db, prune_stale) -> None:
    """List the runs in a store."""
    from storage.store import RunStore  # the store loads only for the commands that read it

    db = db or default_db()
    if prune_stale:
        with RunStore(db, readonly=False) as store:
            for run_id, reason in store.prune_stale():
                click.echo(f"run {run_id}: marked interrupted ({reason})")
    with RunStore(db) as store:
        infos = store.list_runs()
    if not infos:
        click.echo(f"no runs in {db} yet: create one with `cnnviz trace --db {db}`")
        return
    header = (
        "id",
        "name",
        "seed",
        "model",
        "optimizer",
        "lr",
        "status",
        "iters",
        "final loss",
        "started (UTC)",
    )
    rows = [
        (
            str(r.id),
            r.name,
            "" if r.seed is None else str(r.seed),
            r.model_name,
            r.optimizer,
            "" if r.learning_rate is None else f"{r.learning_rate:g}",
            r.status_text,
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
    from .catalog import MODEL_CARDS  # no torch: the defaults only

    rows = [
        (
            m.name,
            f"lr {m.lr:g}, {m.samples} samples, batch {m.batch_size or m.samples}, {m.epochs} epochs, "
            f"max-elements {m.max_elements or 'all'}",
            m.description,
        )
        for m in MODEL_CARDS.values()
    ]
    click.echo(format_table(("name", "defaults", "layers"), rows))


@cli.command()
@click.argument("run_a", metavar="A", type=click.IntRange(min=1))
@click.argument("run_b", metavar="B", type=click.IntRange(min=1))
@click.option(
    "--atol",
    type=NonNegativeFloat(),
    default=0.0,
    show_default=True,
    help="Largest element-wise difference still counted as equal; 0 compares bit for bit.",
)
@db_option
@click.option(
    "--db-b",
    "db_b",
    default=None,
    metavar="PATH|URL",
    help="The store that holds run B, when it is not --db's (two machines, two stores; "
    "SQLite or PostgreSQL, in any mix) [default: --db].",
)
def diverge(run_a, run_b, atol, db, db_b) -> None:
    """Where runs A and B first differ: iteration, step, tensor.

    Run A is in --db; run B too, or in --db-b. Exit status 0 when identical (within
    --atol), 1 when they diverge, 2 on bad input.
    """
    sys.exit(_diverge(run_a, run_b, atol, db or default_db(), db_b))


def _diverge(run_a: int, run_b: int, atol: float, db: str, db_b: str | None = None) -> int:
    from storage.diverge import DivergeError, first_divergence
    from storage.store import RunStore

    with contextlib.ExitStack() as stack:
        store_a = stack.enter_context(RunStore(db, readonly=True))
        store_b = store_a if db_b is None else stack.enter_context(RunStore(db_b, readonly=True))
        for run_id, store, where in ((run_a, store_a, db), (run_b, store_b, db_b or db)):
            if store.get_run(run_id) is None:
                raise click.UsageError(f"there is no run {run_id} in {where}")
        try:
            report = first_divergence(
                store_a.engine,
                run_a,
                run_b,
                atol=atol,
                engine_b=None if db_b is None else store_b.engine,
            )
        except DivergeError as exc:
            raise click.UsageError(str(exc)) from exc
        if db_b is not None:
            report.store_a, report.store_b = _display_location(db), _display_location(db_b)
    click.echo(report.summary())
    return 0 if report.identical else 1


def _display_location(location: str) -> str:
    """A store as the summary names it: the file's path, or the URL without its password."""
    if "://" not in str(location):
        return str(location)
    from sqlalchemy.engine import make_url

    return make_url(str(location)).render_as_string(hide_password=True)


@cli.command()
@click.argument("run_id", metavar="RUN", type=click.IntRange(min=1))
@db_option
def explain(run_id, db) -> None:
    """Explain a run traced with `--explain off`, from its stored raw tensors.

    Every iteration gets the steps, formulas and checks a trace with explanation on
    would have stored; one transaction per iteration, so an interrupted explain keeps
    what it finished and a second one explains the rest.
    """
    from .explain import explain_run

    db = db or default_db()

    def progress(done: int, total: int) -> None:
        click.echo(f"\rexplained {done}/{total} iterations", nl=done == total, err=True)

    result = explain_run(db, run_id, progress=progress)
    click.echo(
        f"run {run_id}: explained {result.explained} iterations in {_display_location(db)}; "
        f"{result.verified}/{result.checked} checked steps match PyTorch"
    )


@cli.command("export")
@click.argument("run_id", metavar="RUN", type=click.IntRange(min=1))
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="The HTML file to write (one file: opens from disk, no server, no network).",
)
@click.option(
    "--iterations",
    default=None,
    metavar="N,N",
    help="Export only these stored iterations [default: every stored iteration].",
)
@db_option
def export_command(run_id, html_path, iterations, db) -> None:
    """Write one run as a self-contained, offline HTML file for a class."""
    _export(run_id, html_path, _iteration_list(iterations), db or default_db())


def _iteration_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of iteration numbers",
            param_hint="'--iterations'",
        )
    return [int(p) for p in parts]


def _export(run_id: int, html_path: str, iterations: list[int] | None, db: str) -> None:
    from dashapp.export import ExportError, export_html
    from storage.store import RunStore

    with RunStore(db, readonly=True) as store:
        try:
            size = export_html(store, run_id, html_path, iterations=iterations)
        except ExportError as exc:
            raise click.UsageError(str(exc)) from exc
        except OSError as exc:
            raise click.UsageError(f"cannot write {html_path}: {exc.strerror or exc}") from exc
    click.echo(f"run {run_id} exported to {html_path} ({size / 1e6:.1f} MB)")


# ---------------------------------------------------------------- dashboard

DEMO_SEEDS = (0, 1, 2)
host_option = click.option(
    "--host",
    default="127.0.0.1",
    envvar="CNNVIZ_HOST",
    show_default=True,
    show_envvar=True,
    help="Interface to listen on. 127.0.0.1 is this machine only; 0.0.0.0 opens it to your network.",
)
port_option = click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8050,
    envvar="CNNVIZ_PORT",
    show_default=True,
    show_envvar=True,
    help="TCP port of the dashboard.",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,  # dashapp.server.WORKERS, without importing gunicorn here
    envvar="CNNVIZ_WORKERS",
    show_default=True,
    show_envvar=True,
    help="gunicorn worker processes, each with 4 threads: about one per core "
    "(docs/team.md has the figures).",
)


@cli.command()
@db_option
@host_option
@port_option
@workers_option
@click.option(
    "--debug",
    is_flag=True,
    help="Dash's development server with its dev tools and the Werkzeug debugger, instead of "
    "gunicorn. Never on a network you do not trust.",
)
def serve(db, host, port, workers, debug) -> None:
    """Serve the dashboard for a store (opened read-only) with gunicorn."""
    _serve(db or default_db(), host, port, debug, workers=workers)


@cli.command()
@db_option
@host_option
@port_option
@workers_option
@click.option("--no-serve", is_flag=True, help="Only add the demo runs, then exit.")
@click.option(
    "--from",
    "source",
    default=None,
    metavar="PATH|URL",
    help="Copy the demo runs the store lacks from this store instead of tracing them "
    "(no torch needed; the Docker image does this).",
)
def demo(db, host, port, workers, no_serve, source) -> None:
    """Add the seed CNN's runs with seeds 0, 1 and 2 that the store lacks, then serve it."""
    db = db or default_db()
    if not no_serve:
        _require_free_port(host, port)  # before tracing, not after
    missing = _missing_demo_seeds(db)
    if not missing:
        click.echo(f"{db} already holds the demo runs (seeds 0, 1, 2)")
    elif source:
        _copy_demo_runs(source, db, missing)
    else:
        from .train import run_builtin

        for seed in missing:
            run = run_builtin(seed=seed, db=db)
            click.echo(
                f"traced run {run.run_id} '{run.info.name}': {run.stored} iterations, "
                f"loss {run.losses[0]:.4f} -> {run.losses[-1]:.4f}"
            )
    if not no_serve:
        _serve(db, host, port, debug=False, workers=workers)


def _demo_run_ids(db: str) -> dict[int, int]:
    """Seed -> id of a completed demo run in the store (a missing or empty file has none)."""
    if "://" not in db:
        from pathlib import Path

        path = Path(db).expanduser()
        if not path.exists() or (path.is_file() and path.stat().st_size == 0):
            return {}
    from storage.records import RUN_COMPLETED
    from storage.store import RunStore

    with RunStore(db, readonly=True) as store:  # a bad store raises StoreError
        return {
            run.seed: run.id
            for run in store.list_runs()
            if run.model_name == "seed-cnn"
            and run.seed in DEMO_SEEDS
            and run.name == f"seed-cnn-seed{run.seed}"
            and run.status == RUN_COMPLETED
        }


def _missing_demo_seeds(db: str) -> list[int]:
    """The demo seeds without a completed run: a start killed midway is filled up later."""
    have = _demo_run_ids(db)
    return [seed for seed in DEMO_SEEDS if seed not in have]


def _copy_demo_runs(source: str, db: str, seeds: list[int]) -> None:
    from storage.store import RunStore
    from storage.transfer import copy_run

    available = _demo_run_ids(source)
    absent = [seed for seed in seeds if seed not in available]
    if absent:
        raise StoreError(f"{source} has no completed demo run for seed {absent[0]}")
    with RunStore(source, readonly=True) as store:
        for seed in seeds:
            run_id = copy_run(store, available[seed], db)
            click.echo(f"copied run {run_id} 'seed-cnn-seed{seed}' from {source}")


def _require_free_port(host: str, port: int) -> None:
    """A one-line usage error (exit 2) instead of a server traceback when the port is taken."""
    import socket

    ctx = click.get_current_context()
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise click.BadParameter(
            f"cannot listen on {host!r}: {reason}", ctx=ctx, param_hint="'--host'"
        ) from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself does
        try:
            probe.bind(address)
        except OSError as exc:
            reason = exc.strerror or exc
            raise click.BadParameter(
                f"cannot listen on {host}:{port}: {reason}", ctx=ctx, param_hint="'--port'"
            ) from exc


def _serve(db: str, host: str, port: int, debug: bool, *, workers: int = 2) -> None:
    _require_free_port(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/"
    if not debug:
        from dashapp.server import serve  # gunicorn; Dash loads only for the commands that serve

        # A missing or invalid store: StoreError, one line, exit 2, before gunicorn starts.
        serve(db, host, port, workers=workers, on_ready=lambda: click.echo(_serving_line(db, url)))
        return
    from dashapp.app import create_app

    app = create_app(db, render_shell=False)  # a bad store: StoreError, one line, exit 2
    click.echo(_serving_line(db, url))
    # No reloader: it would run this command again in a child process. No version
    # check: debug mode would otherwise ask a plotly.com server from the browser.
    app.run(
        host=host, port=port, debug=True, use_reloader=False, dev_tools_disable_version_check=True
    )


@cli.group()
def db() -> None:
    """Manage the store itself."""


@db.command()
@db_option
def upgrade(db) -> None:
    """Upgrade a store to this cnnviz's schema (data kept and checked), or create the
    schema in an empty database."""
    from storage.migrate import upgrade as upgrade_store

    click.echo(upgrade_store(db or default_db()).line())


def _serving_line(db: str, url: str) -> str:
    return f"cnnviz dashboard for {db}: {url}  (Ctrl+C to stop)"


def format_table(header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=False)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


NO_TORCH = (
    "this command needs PyTorch (torch>=2.13), which is not installed: "
    "pip install 'cnnviz[trace]' (in a clone, for the CPU build: "
    "pip install -c constraints/cpu.txt -e '.[trace]')"
)

# click >= 8.2 raises this for a group called with no arguments.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it ends like Ctrl-C: a trace marks
    its run `interrupted` and keeps every committed iteration."""


_TERMINATED = False


def _on_sigterm(signum, frame):
    global _TERMINATED
    _TERMINATED = True
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors and store errors become one line and exit 2."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
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
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "torch":
            raise
        # A dashboard-only install (no "trace" extra) has no torch: say what to install.
        click.echo(f"cnnviz: error: {NO_TORCH}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        if _TERMINATED:  # click turns the KeyboardInterrupt we raised into Abort
            click.echo("cnnviz: terminated; committed iterations are kept", err=True)
            sys.exit(143)
        click.echo("cnnviz: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("cnnviz: terminated; committed iterations are kept", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("cnnviz: interrupted; committed iterations are kept", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
