"""docker-compose.yml and the Dockerfile: valid, and running the same entry points the
other tests exercise (there is no Docker engine here, so the commands run directly)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import urllib.request

import yaml
from dash_helpers import REPO, copy_store, free_port, require, serving, subprocess_env

from tracer.cli import cli

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def image_command() -> list[list[str]]:
    """The image's CMD: `sh -c "A && exec B"` split into the argv of A and of B."""
    cmd = [args for op, args in dockerfile_instructions() if op == "CMD"]
    assert len(cmd) == 1
    argv = json.loads(cmd[0])
    assert argv[:2] == ["sh", "-c"]
    parts = [shlex.split(part) for part in argv[2].split("&&")]
    return [part[1:] if part[0] == "exec" else part for part in parts]


def test_compose_file_is_valid():
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed")
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_builds_this_image_serves_8050_on_loopback_and_keeps_runs_in_a_volume():
    compose = yaml.safe_load(COMPOSE.read_text())
    ((name, service),) = compose["services"].items()
    assert service["build"] == "."
    assert service["ports"] == ["127.0.0.1:8050:8050"]
    db = service["environment"]["CNNVIZ_DB"]
    volume, mount = service["volumes"][0].split(":")
    assert volume in compose["volumes"] and db.startswith(mount + "/")
    env = dict(
        args.split("=", 1)
        for op, args in dockerfile_instructions()
        if op == "ENV" and "=" in args and args.startswith("CNNVIZ_DB")
    )
    assert env == {"CNNVIZ_DB": db}


def test_dockerfile_installs_the_cpu_torch_and_the_package():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for op, args in instructions if op == "RUN"]
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    assert runs.index(
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    ) < runs.index("pip install .")
    assert ("EXPOSE", "8050") in instructions
    assert ("USER", "cnnviz") in instructions


def test_the_image_runs_the_real_demo_command_then_gunicorn_on_the_real_wsgi_app():
    prepare, server = image_command()
    assert prepare[0] == "cnnviz"
    command = cli.commands[prepare[1]]
    command.make_context(prepare[1], prepare[2:])  # parses: real subcommand, real options
    assert prepare[1:] == ["demo", "--no-serve"]
    assert server[0] == "gunicorn"
    assert server[server.index("--bind") + 1] == "0.0.0.0:8050"
    module, attribute = server[-1].split(":")
    assert (module, attribute) == ("dashapp.wsgi", "server")


def test_the_image_command_serves_a_store(dash_store, tmp_path):
    """Run the CMD's two commands as the container would, with the bind moved to loopback."""
    db = copy_store(dash_store, tmp_path / "runs.db")
    env = subprocess_env() | {"CNNVIZ_DB": str(db)}
    prepare, server = image_command()
    done = subprocess.run(
        [sys.executable, "-m", "tracer.cli", *prepare[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0 and "already holds runs" in done.stdout, done.stderr
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", *server[1:]]
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    with serving(argv, port, env=env) as served:
        for path in ("/", "/_dash-layout", "/download/1/1/conv.weight.npy"):
            with urllib.request.urlopen(served.url + path) as response:
                assert response.status == 200, path
    assert "Booting worker" in served.output
