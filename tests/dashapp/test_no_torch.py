"""The dashboard never imports torch: built, served a page and a download without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from dash_helpers import REPO, cnnviz_without_torch, subprocess_env

SCRIPT = textwrap.dedent(
    """
    import sys
    import dashapp.wsgi as wsgi
    server = wsgi.server  # builds the app: every page module is imported
    client = server.test_client()
    for url in ("/", "/_dash-layout", "/download/1/1/conv.weight.npy"):
        assert client.get(url).status_code == 200, url
    assert sorted(m for m in sys.modules if m.startswith("dashapp.pages.")) == [
        "dashapp.pages.compare", "dashapp.pages.iteration", "dashapp.pages.model",
        "dashapp.pages.not_found_404", "dashapp.pages.runs",
    ]
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print("torch modules:", leaked)
    sys.exit(1 if leaked else 0)
    """
)


def test_dashapp_runs_without_importing_torch(dash_store):
    env = subprocess_env() | {"CNNVIZ_DB": str(dash_store)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch modules: []" in result.stdout


def test_wsgi_import_is_lazy_and_a_bad_store_is_one_clear_error(tmp_path):
    script = textwrap.dedent(
        """
        import dashapp.wsgi as wsgi   # importing never touches the store
        from storage import StoreError
        try:
            wsgi.server
        except StoreError as exc:
            print("StoreError:", exc)
        """
    )
    env = subprocess_env() | {"CNNVIZ_DB": str(tmp_path / "missing.db")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"StoreError: no store at {tmp_path / 'missing.db'} "
        f"(run `cnnviz trace --db {tmp_path / 'missing.db'}` first)"
    )


def test_the_command_line_without_torch_lists_runs_and_says_what_tracing_needs(dash_store):
    listing = cnnviz_without_torch("runs", "--db", str(dash_store))
    assert listing.returncode == 0, listing.stderr
    assert "seed-cnn-seed0" in listing.stdout
    models = cnnviz_without_torch("models")  # the model cards need no torch (issue 7)
    assert models.returncode == 0 and "resnet18-cifar" in models.stdout, models.stderr
    # demo without --from traces what the store lacks (dash_store has no seed 2)
    for command in (
        ["trace", "--db", str(dash_store)],
        ["demo", "--db", str(dash_store), "--no-serve"],
    ):
        result = cnnviz_without_torch(*command)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            "cnnviz: error: this command needs PyTorch (torch>=2.13), which is not installed: "
            "pip install 'cnnviz[trace]' (in a clone, for the CPU build: "
            "pip install -c constraints/cpu.txt -e '.[trace]')"
        ]
