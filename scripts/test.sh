#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# The suite writes stores, a PostgreSQL cluster and browser profiles under the temp
# directory (about 300 MB at once); a full disk shows up as hundreds of unrelated errors.
tmp_dir="${TMPDIR:-/tmp}"
free_mb=$(df -Pm "$tmp_dir" | awk 'NR == 2 {print $4}')
if [ "${free_mb:-0}" -lt 1024 ]; then
  echo "only ${free_mb} MB free in $tmp_dir; the tests need about 1 GB (installs included)" >&2
  exit 1
fi

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# The store's tests start a throwaway PostgreSQL server (tests/pg_server.py).
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  else
    echo "missing system packages: ${need_apt[*]} (run: sudo apt-get install ${need_apt[*]})" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# The test extra includes the tracer's torch; the constraints file picks its CPU
# build (PyPI's Linux wheel is the multi-GB CUDA one).
.venv/bin/pip install -q --disable-pip-version-check -c constraints/cpu.txt -e ".[test]"
# The Lightning and Hugging Face callbacks are tested against the real packages
# (the same constraints keep torch the CPU build): ~25 s of CPU to install from
# pip's cache, ~20 s of tests. CNNVIZ_SKIP_INTEGRATIONS=1 leaves them out.
if [ "${CNNVIZ_SKIP_INTEGRATIONS:-}" != 1 ]; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints/cpu.txt -e ".[lightning,huggingface]"
fi
# Lint and formatting first: a second each, and CI runs this script.
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -n 2 "$@"
