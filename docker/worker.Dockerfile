# A Celery GPU worker: one process, one model, one GPU (`avs worker`, solo pool). Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t avesformer-worker:0.1.0 .
# torch==2.14.1 / torchvision==0.29.1 / torchaudio==2.11.0 from PyPI are CUDA builds that bring the CUDA
# runtime, cuDNN and NCCL as pip wheels, so the base is plain Python: the host needs only the NVIDIA driver
# and the NVIDIA Container Toolkit. The same image runs on a CPU-only host (AVS_DEVICE=cpu).
# Stages: `deps` (the torch stack in a venv; cached while pyproject.toml and docker/constraints.txt are
# unchanged, so a code change does not copy gigabytes again), `wheel` (the project), runtime.

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
RUN python requirements.py worker > requirements-worker.txt \
    && pip install --no-cache-dir -r requirements-worker.txt -c constraints.txt

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY model ./model
# The wheel carries the shipped demo checkpoint (model/weights/*.safetensors is package data).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG AVS_VERSION=0.1.0
# The device the image runs on unless AVS_DEVICE says otherwise: cuda (the GPU image) or cpu (the CPU image,
# `--build-arg AVS_DEVICE=cpu`; the same CUDA wheels, which run without a GPU).
ARG AVS_DEVICE=cuda
LABEL org.opencontainers.image.title="AVESFormer worker" \
      org.opencontainers.image.description="Audio-visual segmentation service: a Celery GPU worker (PyTorch, ffmpeg)" \
      org.opencontainers.image.version="${AVS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Debian bookworm's ffmpeg (5.1, the version the media layer is tested against). Pinned as hadolint asks;
# bump with `--build-arg FFMPEG_VERSION=...` when Debian ships a security update (apt-cache policy ffmpeg).
ARG FFMPEG_VERSION=7:5.1.9-0+deb12u1
RUN apt-get update \
    && apt-get install -y --no-install-recommends "ffmpeg=${FFMPEG_VERSION}" \
    && rm -rf /var/lib/apt/lists/*
# Same uid/gid as the API image: both read and write the shared data volume.
RUN groupadd --system --gid 10001 avs \
    && useradd --system --uid 10001 --gid avs --home-dir /home/avs --create-home --shell /usr/sbin/nologin avs \
    && install -d -o avs -g avs /data /weights
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    AVS_DATA_DIR=/data \
    AVS_DEVICE=${AVS_DEVICE} \
    AVS_WORKER_METRICS_PORT=9101
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/*.whl
COPY docker/healthcheck.py /usr/local/lib/avs/healthcheck.py
WORKDIR /home/avs
USER 10001:10001
# Prometheus endpoint of this worker (scraped on the compose network; not published on the host).
EXPOSE 9101
# Healthy once the model is loaded, warmed up and the heartbeat is fresh: allow time for the first CUDA init.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "/usr/local/lib/avs/healthcheck.py", "worker"]
# SIGTERM = Celery warm shutdown: the running job stops after its current batch and is handed back.
STOPSIGNAL SIGTERM
ENTRYPOINT ["avs", "worker"]
CMD ["--loglevel", "INFO"]
