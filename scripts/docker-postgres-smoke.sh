#!/usr/bin/env bash
# Runs the PostgreSQL override for real (docker-compose.yml + docker-compose.postgres.yml,
# as docs/team.md documents it), then cleans up. Not part of CI: it needs a Docker
# engine. Run it (as root, on Debian) before a change to either compose file lands.
#
#   bash scripts/docker-postgres-smoke.sh
#
# On the project's machines no registry image can be pulled and dockerd may only run
# without a bridge, so, like scripts/docker-smoke.sh (run that once first: its
# stand-in python:3.11-slim, $WORK/base.tar, is the base here too), this script
#   - starts its own dockerd (no bridge, no iptables) and stops it by PID at the end;
#   - builds a stand-in for postgres:15 from Debian's postgresql-15
#     (scripts/postgres-standin/), tagged postgres:15, when the machine has none;
#   - runs compose with host networking: a derived compose file (compose v1 refuses
#     `ports:` with network_mode: host, and there is no service name resolution), with
#     the server on a free loopback port and the dashboard's URL pointed at it.
# Checks: both images build; PostgreSQL turns healthy and the dashboard after it; the
# demo's three runs are copied into PostgreSQL (counted with psql in its container);
# a trace from this machine lands there and the dashboard counts it; a trace killed
# with SIGKILL reads `stale` from the dashboard's container (another pid namespace:
# only the run's lease can tell) and `cnnviz runs --prune-stale` there marks it;
# `down`/`up` keeps the database volume and does not copy the demo again.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${CNNVIZ_DOCKER_WORK:-/tmp/cnnviz-docker}
PROJECT=cnnvizpg
mkdir -p "$WORK"

say() { printf '[docker-postgres-smoke %(%H:%M:%S)T] %s\n' -1 "$*"; }
fail() { say "FAIL: $*"; exit 1; }
t0=$SECONDS
elapsed() { echo "$((SECONDS - t0)) s"; }

[ "$(id -u)" = 0 ] || fail "run as root (dockerd)"
[ -x .venv/bin/cnnviz ] || fail "no .venv/bin/cnnviz: pip install -c constraints/cpu.txt -e '.[test]'"
[ -f "$WORK/base.tar" ] || docker image inspect python:3.11-slim >/dev/null 2>&1 ||
  fail "no stand-in base: run scripts/docker-smoke.sh once first (it makes $WORK/base.tar)"

# ---------------------------------------------------------------- dockerd
export DOCKER_HOST="unix://$WORK/docker.sock"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0  # the classic builder, as dockerd 20.10 has it
dockerd --bridge=none --iptables=false --ip-masq=false \
  --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$WORK/exec" \
  --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
INDEX_PID=
TRACE_PID=
compose() { docker-compose -p "$PROJECT" -f "$WORK/compose-pg.yml" "$@"; }
cleanup() {
  set +e
  say "cleaning up"
  [ -n "$TRACE_PID" ] && kill -9 "$TRACE_PID" 2>/dev/null
  [ -f "$WORK/compose-pg.yml" ] && compose down -v --remove-orphans >/dev/null 2>&1
  [ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null
  kill "$DOCKERD_PID" 2>/dev/null
  wait "$DOCKERD_PID" 2>/dev/null
  say "dockerd $DOCKERD_PID stopped"
}
trap cleanup EXIT
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null 2>&1 || fail "dockerd did not start: $(tail -3 "$WORK/dockerd.log")"
say "dockerd $DOCKERD_PID up ($(docker version --format '{{.Server.Version}}'))"

# ---------------------------------------------------------------- images
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  docker import --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' "$WORK/base.tar" python:3.11-slim >/dev/null
fi
if ! docker image inspect postgres:15 >/dev/null 2>&1; then
  say "building the stand-in postgres:15 (Debian's postgresql-15)"
  docker build -q --network host -t postgres:15 scripts/postgres-standin >/dev/null ||
    fail "the postgres:15 stand-in did not build"
fi
size() { docker image inspect "$1" --format '{{.Size}}' | numfmt --to=si; }
say "postgres:15: $(size postgres:15)B ($(elapsed))"

wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1) || true
[ -n "$wheel" ] || fail "no CPU torch wheel in /opt/wheels"
mkdir -p "$WORK/index/torch"
ln -sf "$wheel" "$WORK/index/torch/"
INDEX_PORT=${CNNVIZ_SMOKE_INDEX_PORT:-38471}  # fixed: the build argument is in the cache key
python3 -m http.server "$INDEX_PORT" --bind 127.0.0.1 --directory "$WORK/index" >/dev/null 2>&1 &
INDEX_PID=$!

# ---------------------------------------------------------------- compose file
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
PGPORT=$(free_port)
export CNNVIZ_HOST=127.0.0.1 CNNVIZ_PORT=$PORT POSTGRES_PASSWORD=smoke-test
.venv/bin/python - "$REPO" "$WORK/compose-pg.yml" "$INDEX_PORT" "$PGPORT" <<'EOF'
import sys

import yaml

repo, target, index_port, pg_port = sys.argv[1:]


def merge(base, over):
    """Compose's own merge, as far as these two files need it: mappings merge."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: merge(base[k], v) if k in base else v for k, v in over.items()} | {
            k: v for k, v in base.items() if k not in over
        }
    return over


compose = merge(
    yaml.safe_load(open(f"{repo}/docker-compose.yml")),
    yaml.safe_load(open(f"{repo}/docker-compose.postgres.yml")),
)
dashboard, postgres = compose["services"]["dashboard"], compose["services"]["postgres"]
dashboard["build"] = {
    "context": repo,
    "network": "host",
    "args": {"TORCH_INDEX_URL": f"http://127.0.0.1:{index_port}/"},
}
# Host networking: no published ports, no service names; the server on a free port.
for service in (dashboard, postgres):
    service.pop("ports")
    service["network_mode"] = "host"
url = dashboard["environment"]["CNNVIZ_DB"]
dashboard["environment"]["CNNVIZ_DB"] = url.replace("@postgres:5432/", f"@127.0.0.1:{pg_port}/")
postgres["command"] = ["postgres", "-c", f"port={pg_port}"]
postgres["healthcheck"]["test"] = postgres["healthcheck"]["test"] + ["-p", pg_port]
yaml.safe_dump(compose, open(target, "w"), sort_keys=False)
EOF
DB="postgresql+psycopg://cnnviz:$POSTGRES_PASSWORD@127.0.0.1:$PGPORT/cnnviz"
URL="http://127.0.0.1:$PORT"

# ---------------------------------------------------------------- build
say "building the dashboard image"
b0=$SECONDS
compose build -q >/dev/null 2>&1 || compose build || fail "compose build"
say "built in $((SECONDS - b0)) s: cnnviz-dashboard $(size cnnviz-dashboard)B"

# ---------------------------------------------------------------- up
cid() { compose ps -q "$1"; }
health() { docker inspect --format '{{.State.Health.Status}}' "$(cid "$1")"; }
wait_health() {  # wait_health SERVICE WANT SECONDS
  local until=$((SECONDS + $3))
  while [ $SECONDS -lt $until ]; do
    [ "$(health "$1" 2>/dev/null)" = "$2" ] && return 0
    sleep 0.5
  done
  fail "$1 not $2 after $3 s (now: $(health "$1")); logs: $(compose logs --tail 20)"
}
psql_count() {
  compose exec -T -e PGPASSWORD="$POSTGRES_PASSWORD" postgres \
    psql -U cnnviz -d cnnviz -p "$PGPORT" -h 127.0.0.1 -tAc "$1"
}
u0=$SECONDS
compose up -d
wait_health postgres healthy 120
say "postgres healthy $((SECONDS - u0)) s after up"
wait_health dashboard healthy 180
say "dashboard healthy $((SECONDS - u0)) s after up"
[ "$(docker logs "$(cid dashboard)" 2>&1 | grep -c "copied run")" = 3 ] ||
  fail "the demo did not copy three runs: $(docker logs "$(cid dashboard)" 2>&1 | tail -5)"
curl -fsS "$URL/healthz" | grep -q '"runs":3' || fail "/healthz does not count three runs"
[ "$(psql_count 'SELECT count(*) FROM runs')" = 3 ] ||
  fail "PostgreSQL does not hold three runs"
page=$(curl -fsS "$URL/")
grep -q '_dash-config' <<<"$page" || fail "the dashboard page did not answer"
curl -fsS -o /dev/null "$URL/download/1/1/conv.weight.npy" || fail "a download did not answer"
say "demo: three runs in PostgreSQL (psql counts them); /, /healthz and a download answer"

# ---------------------------------------------------------------- a trainer elsewhere
.venv/bin/cnnviz trace --db "$DB" --seed 5 >/dev/null || fail "cnnviz trace into PostgreSQL"
curl -fsS "$URL/healthz" | grep -q '"runs":4' || fail "/healthz does not count the traced run"
# Output into a variable before grep: `grep -q` quits early, and with pipefail the
# writer's SIGPIPE would read as a failure.
runs_here() { compose exec -T dashboard cnnviz runs "$@"; }
listed=$(runs_here)
grep -q "seed-cnn-seed5" <<<"$listed" || fail "the run is not listed"
say "a trace from this machine landed in PostgreSQL; the dashboard lists 4 runs"

# A writer killed outright: the dashboard's container has another pid namespace, so
# only the run's lease (released by the server with the dead session) tells.
.venv/bin/cnnviz trace --db "$DB" --seed 6 --epochs 100000 >/dev/null 2>&1 &
TRACE_PID=$!
for _ in $(seq 1 600); do
  n=$(psql_count "SELECT num_iterations FROM runs WHERE name = 'seed-cnn-seed6'" 2>/dev/null || true)
  [ "${n:-0}" -ge 2 ] 2>/dev/null && break
  sleep 0.2
done
listed=$(runs_here)
grep "seed-cnn-seed6" <<<"$listed" | grep -q running ||
  fail "the live trace does not read running from the dashboard's container: $listed"
kill -9 "$TRACE_PID"
wait "$TRACE_PID" 2>/dev/null || true
TRACE_PID=
sleep 1
listed=$(runs_here)
grep "seed-cnn-seed6" <<<"$listed" | grep -q stale || fail "the killed trace does not read stale: $listed"
pruned=$(runs_here --prune-stale)
grep -q "marked interrupted" <<<"$pruned" || fail "--prune-stale did not mark the killed run: $pruned"
say "$(head -1 <<<"$pruned")"
say "a SIGKILLed trace read running, then stale from the dashboard's container; pruned"

# ---------------------------------------------------------------- down / up
compose down
u0=$SECONDS
compose up -d
wait_health dashboard healthy 180
say "healthy $((SECONDS - u0)) s after down/up"
curl -fsS "$URL/healthz" | grep -q '"runs":5' || fail "down/up lost runs: $(curl -sS "$URL/healthz")"
log=$(docker logs "$(cid dashboard)" 2>&1)
grep -q "already holds the demo runs" <<<"$log" || fail "the demo ran again"
say "down/up kept the database volume (5 runs) and did not copy the demo again"

say "all checks passed in $(elapsed)"
