#!/usr/bin/env bash
# Runs the tracer's tests (everything that imports torch) on each torch release
# cnnviz supports, one virtual environment per release.
#
# Usage: bash scripts/test-torch-versions.sh [pytest args...]
#   CNNVIZ_TORCH_VERSIONS="2.13.0+cpu=.venv 2.14.1=.venv214"  (release=venv, the default)
#
# 2.13.0+cpu is the CPU build the suite pins (constraints/cpu.txt); 2.14.1 is the
# newest release this machine holds (a ~3.5 GB CUDA build, which runs on CPU).
# Elsewhere either may need PyTorch's index: --extra-index-url https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

versions=${CNNVIZ_TORCH_VERSIONS:-"2.13.0+cpu=.venv 2.14.1=.venv214"}
status=0
for pair in $versions; do
  version=${pair%%=*}
  venv=${pair#*=}
  pin=$(mktemp)
  echo "torch==$version" > "$pin"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # The release first, then cnnviz with the same pin, so nothing replaces it.
  "$venv/bin/pip" install -q --disable-pip-version-check -c "$pin" "torch==$version"
  "$venv/bin/pip" install -q --disable-pip-version-check -c "$pin" -e ".[test]"
  rm -f "$pin"
  installed=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
  echo "== torch $installed ($venv)"
  if ! "$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider \
      tests/tracer tests/test_numpy_recompute.py tests/storage/test_names.py "$@"; then
    echo "== FAILED on torch $installed" >&2
    status=1
  fi
done
exit $status
