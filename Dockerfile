# CosmicMan Prime: the Dagster code location, its run and step pods, and the training / evaluation pods.
#
#   docker build --target cpu  -t registry.example.com/cosmicman:0.1.0-cpu  .
#   docker build --target cuda -t registry.example.com/cosmicman:0.1.0-cuda .
#
# Both targets install the project from pyproject.toml with its pins; they differ only in the torch wheel:
# the CPU build from PyTorch's CPU index, the CUDA build from PyPI (its wheel bundles the CUDA runtime, so
# the node needs only the NVIDIA driver). The base image is pinned by exact version tag. Pods run it as the
# numeric non-root user 10001 with a read-only root filesystem: /tmp and $HOME/.cache are emptyDir mounts
# (cosmicman/resources/pod_security.py), so every cache points there.

FROM python:3.11.7-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 10001 cosmicman \
    && useradd --uid 10001 --gid 10001 --home-dir /home/cosmicman --create-home --shell /usr/sbin/nologin cosmicman

# --- dependencies, then the project; torch first from the target's index so no other build is pulled -----
FROM base AS build-cpu
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cosmicman ./cosmicman
RUN pip install ./

FROM base AS build-cuda
RUN python -m venv /opt/venv \
    && pip install torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cosmicman ./cosmicman
# the [train] extra: DeepSpeed for multi-GPU / multi-node training
RUN pip install "./[train]"

# --- runtime images ------------------------------------------------------------------------------------------
FROM base AS runtime
ENV HOME=/home/cosmicman \
    XDG_CACHE_HOME=/home/cosmicman/.cache \
    HF_HOME=/home/cosmicman/.cache/huggingface \
    TORCH_HOME=/home/cosmicman/.cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    COSMICMAN_ENV=k8s
WORKDIR /opt/cosmicman
COPY workspace.yaml ./
EXPOSE 3030
CMD ["dagster", "api", "grpc", "--module-name", "cosmicman.definitions", "--host", "0.0.0.0", "--port", "3030"]

FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
USER 10001:10001

FROM runtime AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
