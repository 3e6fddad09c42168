# The HTTP API: FastAPI under uvicorn, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t avesformer-api:0.1.0 .
# Three stages so that a code change rebuilds one small layer: `deps` (the [api] requirements in a venv,
# cached while pyproject.toml and docker/constraints.txt are unchanged), `wheel` (the project itself) and
# the runtime image, which gets the venv, the wheel and ffmpeg/ffprobe (uploads are probed with ffprobe).

# The base is a build argument: the public image by default; where Docker Hub cannot be reached, a local
# stand-in (scripts/make-base-images.sh: --build-arg PYTHON_IMAGE=avs-local/python:3.11-bookworm).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml docker/requirements.py docker/constraints.txt ./
RUN python requirements.py api > requirements-api.txt \
    && pip install --no-cache-dir -r requirements-api.txt -c constraints.txt

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY model ./model
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG AVS_VERSION=0.1.0
LABEL org.opencontainers.image.title="AVESFormer API" \
      org.opencontainers.image.description="Audio-visual segmentation service: the HTTP API (FastAPI, no torch)" \
      org.opencontainers.image.version="${AVS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Debian bookworm's ffmpeg (5.1, the version the media layer is tested against). Pinned as hadolint asks;
# bump with `--build-arg FFMPEG_VERSION=...` when Debian ships a security update (apt-cache policy ffmpeg).
ARG FFMPEG_VERSION=7:5.1.9-0+deb12u1
RUN apt-get update \
    && apt-get install -y --no-install-recommends "ffmpeg=${FFMPEG_VERSION}" \
    && rm -rf /var/lib/apt/lists/*
# One fixed uid/gid in both images: the API writes uploads that the workers read from the shared volume.
RUN groupadd --system --gid 10001 avs \
    && useradd --system --uid 10001 --gid avs --home-dir /home/avs --create-home --shell /usr/sbin/nologin avs \
    && install -d -o avs -g avs /data
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AVS_DATA_DIR=/data \
    PROMETHEUS_MULTIPROC_DIR=/tmp/avs-metrics/prometheus
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/*.whl
COPY docker/healthcheck.py /usr/local/lib/avs/healthcheck.py
WORKDIR /home/avs
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/avs/healthcheck.py", "api"]
# `avs serve` wipes PROMETHEUS_MULTIPROC_DIR, then runs uvicorn with --workers processes.
ENTRYPOINT ["avs"]
CMD ["serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
