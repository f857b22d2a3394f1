# syntax=docker/dockerfile:1
# IAN node image: `docker build -t ian-network/ian-node .`
# Build stage: make the wheel and install it with its locked dependencies into /opt/venv.
FROM python:3.12-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel needs (see .dockerignore): metadata, the lock and the two packages.
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src

# requirements.lock is a constraints file: it pins every dependency the wheel pulls in.
RUN python -m venv /opt/venv \
 && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && /opt/venv/bin/pip install --no-cache-dir --constraint requirements.lock /dist/ian_node-*.whl

# Runtime stage: the venv only; no compilers, no wheel, no sources.
FROM python:3.12-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IAN_DATA_DIR=/data \
    IAN_LOG_FORMAT=json

RUN groupadd --system --gid 1000 ian \
 && useradd --system --uid 1000 --gid 1000 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin ian \
 && mkdir /data \
 && chown 1000:1000 /data \
 && chmod 0700 /data

COPY --from=builder /opt/venv /opt/venv

USER 1000:1000
WORKDIR /data
VOLUME ["/data"]

# 8000 HTTP API (health, metrics), 9000 P2P (TLS 1.3), 9001 event stream.
EXPOSE 8000 9000 9001

# No curl in slim images: the same GET /health with the interpreter we already ship.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; port=os.environ.get('IAN_API_PORT') or '8000'; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/health' % port, timeout=3).read() == b'OK' else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["ian"]
CMD ["node", "run"]
