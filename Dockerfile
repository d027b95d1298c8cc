# cnnviz dashboard image: the CPU build of torch (for tracing the demo runs),
# the cnnviz package, and gunicorn serving dashapp.wsgi:server on port 8050.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from PyTorch's CPU index: from PyPI it would pull the multi-GB
# CUDA build. Its own layer, so code changes do not download it again.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY tracer ./tracer
COPY dashapp ./dashapp
# torch==2.13.0 is already installed, so this adds only the package and the rest.
# The postgres extra (psycopg) lets the same image serve a PostgreSQL store
# (docker-compose.postgres.yml).
RUN pip install ".[postgres]"

# An unprivileged user that owns the store's directory (the named volume is
# created from it, so it starts out owned by this user too).
RUN useradd --create-home --uid 10001 cnnviz && mkdir /data && chown cnnviz:cnnviz /data
USER cnnviz
WORKDIR /home/cnnviz
ENV CNNVIZ_DB=/data/runs.db
VOLUME /data
EXPOSE 8050

# Trace the three demo runs when the store has none, then serve with gunicorn.
# 0.0.0.0 is the container's own interface: Docker forwards the published host
# port to it, and the container's 127.0.0.1 would be unreachable from outside.
CMD ["sh", "-c", "cnnviz demo --no-serve && exec gunicorn --bind 0.0.0.0:8050 --workers 2 --access-logfile - dashapp.wsgi:server"]
