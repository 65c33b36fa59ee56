# syntax=docker/dockerfile:1
# One image for every pixpipe service; docker-compose.yml picks the service with `command`.

# Build stage: install pixpipe and its runtime dependencies (no dev extras) into a venv.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, against the bare package (its __init__ holds the version), so editing
# the code does not reinstall them. The tracing extra lets PIXPIPE_TRACING be turned on.
COPY pyproject.toml README.md ./
COPY src/pixpipe/__init__.py src/pixpipe/__init__.py
RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip install ".[tracing]"

COPY src ./src
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps --force-reinstall ".[tracing]" \
    && /opt/venv/bin/pixpipe-migrate --help >/dev/null

# Runtime stage: the venv and nothing else, run by an unprivileged user.
FROM python:3.11-slim

RUN groupadd --system --gid 10001 pixpipe \
    && useradd --system --uid 10001 --gid pixpipe --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pixpipe \
    && mkdir -p /data \
    && chown pixpipe:pixpipe /data

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIXPIPE_DATA_DIR=/data \
    PIXPIPE_BIND_HOST=0.0.0.0

USER pixpipe:pixpipe
WORKDIR /data

# gateway (REST), ingest (gRPC), status/notifier (gRPC)
EXPOSE 8000 50051 50052

CMD ["pixpipe-gateway"]
