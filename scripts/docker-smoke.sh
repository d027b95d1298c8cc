#!/usr/bin/env bash
# Builds the Docker image and runs the compose stack for real, then cleans up.
# Run it (as root, on Debian) before any change to Dockerfile, docker-compose.yml
# or .dockerignore lands. Not part of CI: it needs a Docker engine.
#
#   bash scripts/docker-smoke.sh
#
# On the project's machines no registry image can be pulled and dockerd may only
# run without a bridge, so this script
#   - starts its own dockerd (own socket and data root under $WORK; no bridge,
#     no iptables) and stops it by PID at the end;
#   - makes a stand-in for python:3.11-slim from Debian's packages (debootstrap +
#     docker import): Debian's python3 in a venv at /usr/local, the machine's
#     extra CA certificates, pip pointed at the system CA bundle;
#   - serves the CPU torch wheel of /opt/wheels as the build's TORCH_INDEX_URL;
#   - runs compose with host networking (a derived compose file: compose v1
#     refuses `ports:` with network_mode: host) on a free loopback port.
# Checks: the image builds; the runtime image has no torch; the stack turns
# healthy; the demo copied three runs; the dashboard answers; a trace from inside
# the build-stage image (the runtime has no torch); `down`/`up` keeps the volume
# and does not copy again; a store broken under the server turns /healthz 503
# and the container unhealthy; after a first start interrupted at one demo run,
# a restart fills the store up to the three. Prints timings and image sizes. The images stay in
# $WORK/data as the build cache of the next run (rm -rf $WORK frees it all).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${CNNVIZ_DOCKER_WORK:-/tmp/cnnviz-docker}
PROJECT=cnnvizsmoke
mkdir -p "$WORK"

say() { printf '[docker-smoke %(%H:%M:%S)T] %s\n' -1 "$*"; }
fail() { say "FAIL: $*"; exit 1; }
t0=$SECONDS
elapsed() { echo "$((SECONDS - t0)) s"; }

[ "$(id -u)" = 0 ] || fail "run as root (dockerd, debootstrap)"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# ---------------------------------------------------------------- dockerd
export DOCKER_HOST="unix://$WORK/docker.sock"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0  # the classic builder, as dockerd 20.10 has it
dockerd --bridge=none --iptables=false --ip-masq=false \
  --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$WORK/exec" \
  --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
INDEX_PID=
compose() { docker-compose -p "$PROJECT" -f "$WORK/compose.yml" "$@"; }
cleanup() {
  set +e
  say "cleaning up"
  [ -f "$WORK/compose.yml" ] && compose down -v --remove-orphans >/dev/null 2>&1
  [ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null
  kill "$DOCKERD_PID" 2>/dev/null
  wait "$DOCKERD_PID" 2>/dev/null
  say "dockerd $DOCKERD_PID stopped"
}
trap cleanup EXIT
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null 2>&1 || fail "dockerd did not start: $(tail -3 "$WORK/dockerd.log")"
say "dockerd $DOCKERD_PID up ($(docker version --format '{{.Server.Version}}'))"

# ---------------------------------------------------------------- stand-in base
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  if [ ! -f "$WORK/base.tar" ]; then
    if [ ! -f "$WORK/rootfs.done" ]; then
      say "debootstrap bookworm (a few minutes, once; cached in $WORK/base.tar)"
      rm -rf "$WORK/rootfs"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
        fail "debootstrap: $(tail -3 "$WORK/debootstrap.log")"
      touch "$WORK/rootfs.done"
    fi
    cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$WORK/rootfs" update-ca-certificates >/dev/null
    # python:3.11-slim has python and pip on PATH and installs into its own prefix.
    chroot "$WORK/rootfs" python3 -m venv /usr/local
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$WORK/rootfs/etc/pip.conf"
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -cf "$WORK/base.tar" .
  fi
  docker import --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' "$WORK/base.tar" python:3.11-slim >/dev/null
fi
say "stand-in python:3.11-slim: $(docker image inspect python:3.11-slim --format '{{.Size}}' | numfmt --to=si)B ($(elapsed))"

# ---------------------------------------------------------------- torch wheel index
wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1) || true
[ -n "$wheel" ] || fail "no CPU torch wheel in /opt/wheels"
mkdir -p "$WORK/index/torch"
ln -sf "$wheel" "$WORK/index/torch/"
# A fixed port: the build argument is part of the build cache's key.
INDEX_PORT=${CNNVIZ_SMOKE_INDEX_PORT:-38471}
python3 -m http.server "$INDEX_PORT" --bind 127.0.0.1 --directory "$WORK/index" >/dev/null 2>&1 &
INDEX_PID=$!

# ---------------------------------------------------------------- compose file
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python  # has pyyaml (the test extra)
"$PYTHON" - "$REPO" "$WORK/compose.yml" "$INDEX_PORT" <<'EOF'
import sys

import yaml

repo, target, index_port = sys.argv[1:]
compose = yaml.safe_load(open(f"{repo}/docker-compose.yml"))
service = compose["services"]["dashboard"]
service["build"] = {
    "context": repo,
    "network": "host",
    "args": {"TORCH_INDEX_URL": f"http://127.0.0.1:{index_port}/"},
}
service.pop("ports")  # compose v1 refuses ports with host networking
service["network_mode"] = "host"
yaml.safe_dump(compose, open(target, "w"), sort_keys=False)
EOF
export CNNVIZ_HOST=127.0.0.1 CNNVIZ_PORT=$PORT
URL="http://127.0.0.1:$PORT"

# ---------------------------------------------------------------- build
say "building (tracer stage, then runtime)"
b0=$SECONDS
docker build -q --network host --target tracer -t cnnviz-tracer \
  --build-arg TORCH_INDEX_URL="http://127.0.0.1:$INDEX_PORT/" . >/dev/null ||
  fail "the tracer stage did not build"
compose build -q >/dev/null 2>&1 || compose build || fail "compose build"
build_s=$((SECONDS - b0))
size() { docker image inspect "$1" --format '{{.Size}}' | numfmt --to=si; }
say "built in ${build_s} s: runtime image $(size cnnviz-dashboard)B, tracer stage $(size cnnviz-tracer)B, base $(size python:3.11-slim)B"
docker run --rm --network host cnnviz-dashboard python -c \
  "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" ||
  fail "the runtime image has torch"
say "the runtime image has no torch"

# ---------------------------------------------------------------- up
logs() { docker logs "$(compose ps -q dashboard)" 2>&1; }  # this container's own output
health() { docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q dashboard)"; }
wait_health() {  # wait_health WANT SECONDS
  local until=$((SECONDS + $2))
  while [ $SECONDS -lt $until ]; do
    [ "$(health 2>/dev/null)" = "$1" ] && return 0
    sleep 0.5
  done
  fail "not $1 after $2 s (now: $(health)); logs: $(compose logs --tail 20)"
}
u0=$SECONDS
compose up -d
wait_health healthy 120
say "healthy $((SECONDS - u0)) s after up"
logs | grep -c "copied run" | grep -qx 3 || fail "the demo did not copy three runs"
curl -fsS "$URL/healthz" | grep -q '"runs":3' || fail "/healthz does not count three runs"
curl -fsS "$URL/" | grep -q '_dash-config' || fail "the dashboard page did not answer"
curl -fsS "$URL/_dash-layout" | grep -q '_pages_content' || fail "the dashboard layout did not answer"
curl -fsS -o /dev/null "$URL/download/1/1/conv.weight.npy" || fail "a download did not answer"
say "demo: three runs; /, /_dash-layout, /healthz and a download answer"

# A trace from inside a container, into the running stack's volume: the build-stage
# image (the runtime has no torch), as the container's user.
volume=$(docker volume ls -q | grep "^${PROJECT}_runs$") || fail "no volume"
docker run --rm --network host --user 10001 -v "$volume:/data" cnnviz-tracer \
  cnnviz trace --seed 5 --db /data/runs.db >/dev/null || fail "cnnviz trace in a container"
compose exec -T dashboard cnnviz runs | grep -q "seed-cnn-seed5" || fail "the traced run is not listed"
curl -fsS "$URL/healthz" | grep -q '"runs":4' || fail "/healthz does not count the traced run"
say "a trace from a container landed in the volume; the server sees 4 runs"

# ---------------------------------------------------------------- down / up
compose down
u0=$SECONDS
compose up -d
wait_health healthy 120
say "healthy $((SECONDS - u0)) s after down/up"
curl -fsS "$URL/healthz" | grep -q '"runs":4' || fail "down/up lost runs"
logs | grep -q "already holds the demo runs" || fail "the demo ran again"
say "down/up kept the volume (4 runs) and did not copy the demo again"

# ---------------------------------------------------------------- a broken store
compose exec -T dashboard sh -c 'head -c 4096 /dev/urandom > /data/runs.db'
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/healthz")
[ "$code" = 503 ] || fail "/healthz answered $code for a broken store"
u0=$SECONDS
wait_health unhealthy 60
say "broken store: /healthz 503, unhealthy after $((SECONDS - u0)) s"

# ---------------------------------------------------------------- an interrupted first start
# A first start killed after copying one demo run: the next start copies the other two.
compose exec -T dashboard sh -c 'rm -f /data/runs.db /data/runs.db-wal /data/runs.db-shm'
compose exec -T dashboard python -c "from storage.store import RunStore
from storage.transfer import copy_run
with RunStore('/opt/cnnviz/demo.db') as demo:
    copy_run(demo, 1, '/data/runs.db')"
u0=$SECONDS
compose restart
wait_health healthy 120
curl -fsS "$URL/healthz" | grep -q '"runs":3' || fail "the restart did not fill up to three runs"
[ "$(logs | grep -c "copied run")" = 2 ] || fail "not two copies after the restart"
say "after a start interrupted at one demo run: healthy $((SECONDS - u0)) s after restart, 3 runs"

say "all checks passed in $(elapsed)"
