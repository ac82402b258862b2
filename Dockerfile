# syntax=docker/dockerfile:1
# One image for every cluster process: `quip gateway`, `quip worker`, `quip api`,
# `quip migrate`, `quip topics create`, in docker-compose.yml and in the Kubernetes
# manifests (deploy/k8s), which both name it `quip-pipeline`.
#
#   docker build -t quip-pipeline .
#   docker run --rm quip-pipeline --help

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies get their own layer, keyed on pyproject.toml alone, so a code change does
# not re-download chDB and pyarrow. Every pinned dependency ships a cp311 manylinux wheel,
# which is why this stage needs no compiler.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt

COPY . .
# A regular (non-editable) install: the runtime stage gets the venv only, not /src.
RUN pip install --no-deps . \
    && quip --help > /dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="quip-pipeline" \
      org.opencontainers.image.description="Qui Pipeline: ingest gateway, Faust worker, query API" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid lets Kubernetes `runAsNonRoot` verify the user without a lookup.
RUN groupadd --system --gid 10001 quip \
    && useradd --system --uid 10001 --gid quip --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin quip \
    && mkdir -p /app \
    && chown quip:quip /app

COPY --from=builder /opt/venv /opt/venv

# /app is the working directory: `quip up` keeps its embedded data in ./.quip. The cluster
# processes write only temporary files (Faust's data directory included) under /tmp, so
# Kubernetes runs them with a read-only root filesystem and an emptyDir on /tmp.
WORKDIR /app
USER 10001:10001

# 8000 api / up, 8080 gateway, 6066 the Faust worker's web server (/health, /metrics).
EXPOSE 8000 8080 6066

# No HEALTHCHECK here: each command listens on its own port, so compose and Kubernetes
# probe /health per service.
ENTRYPOINT ["quip"]
CMD ["--help"]
