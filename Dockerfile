# cnnviz dashboard image, in two stages:
#   tracer   the CPU build of torch and the tracer; traces the three demo runs at
#            build time into /demo/runs.db (thrown away after the build)
#   runtime  cnnviz without torch, the demo store, gunicorn serving $CNNVIZ_DB
# Measured by scripts/docker-smoke.sh on its stand-in base (191 MB): tracer stage
# 1.4 GB, runtime image 447 MB (the base, then 256 MB of dash, plotly, numpy, psycopg, ...).
FROM python:3.11-slim AS tracer

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch's CPU index for the "+cpu" pin of constraints/cpu.txt (PyPI's Linux
# wheel is the multi-GB CUDA build). A build argument, so a mirror can stand in.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY storage ./storage
COPY tracer ./tracer
COPY dashapp ./dashapp
RUN pip install -c constraints/cpu.txt --extra-index-url "$TORCH_INDEX_URL" ".[trace]"
# Rollback journal instead of WAL: the runtime reads this file as a user who cannot
# write beside it, and SQLite opens a WAL database read-only only where it may
# create the -shm file.
RUN cnnviz demo --no-serve --db /demo/runs.db && \
    python -c "import sqlite3; sqlite3.connect('/demo/runs.db').execute('PRAGMA journal_mode=DELETE').close()"


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY tracer ./tracer
COPY dashapp ./dashapp
# No "trace" extra: the dashboard needs no torch. The postgres extra (psycopg)
# lets the same image serve a PostgreSQL store (docker-compose.postgres.yml).
RUN pip install ".[postgres]" && rm -rf /src

COPY --from=tracer /demo/runs.db /opt/cnnviz/demo.db

# An unprivileged user that owns the store's directory (the named volume is
# created from it, so it starts out owned by this user too).
RUN useradd --create-home --uid 10001 cnnviz && mkdir /data && chown cnnviz:cnnviz /data
USER cnnviz
WORKDIR /home/cnnviz
# 0.0.0.0 is the container's own interface: Docker forwards the published host
# port to it, and the container's 127.0.0.1 would be unreachable from outside.
# With host networking (no port publishing) set CNNVIZ_HOST=127.0.0.1.
ENV CNNVIZ_DB=/data/runs.db \
    CNNVIZ_HOST=0.0.0.0 \
    CNNVIZ_PORT=8050
VOLUME /data
EXPOSE 8050

# /healthz opens the store and reads it: a deleted or corrupted store is unhealthy.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CNNVIZ_PORT', '8050'), timeout=4)"]

# Copy the demo runs the store lacks (all three the first time; the rest after a
# start that was killed midway), then serve with gunicorn on $CNNVIZ_HOST:$CNNVIZ_PORT.
CMD ["cnnviz", "demo", "--from", "/opt/cnnviz/demo.db"]
