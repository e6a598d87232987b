# syntax=docker/dockerfile:1
# Silo training and aggregation Jobs: torch (CUDA) + DeepSpeed with its fused ops prebuilt, so
# nothing compiles at run time on a read-only root filesystem.
#   docker build -f images/trainer.Dockerfile -t ghcr.io/fedma/trainer:0.1.0 .
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's archive drops superseded versions, so exact apt pins break rebuilds; the base image
# tag pins the release and Python comes from it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY fedma ./fedma
COPY operator ./operator
# torch first (its PyPI Linux wheel is the CUDA build), then the project with the DeepSpeed and
# S3 extras; FusedAdam and the CPU Adam are compiled here, against the devel toolkit.
ENV DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
RUN python3.12 -m venv /opt/fedma \
 && /opt/fedma/bin/pip install -c constraints.txt torch==2.13.0 \
 && /opt/fedma/bin/pip install -c constraints.txt ".[deepspeed,s3]" \
 && /opt/fedma/bin/python -c "import fedma.cli, deepspeed"

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
LABEL org.opencontainers.image.title="fedma-trainer" \
      org.opencontainers.image.description="fedma train-silo and aggregate Job entrypoints (CUDA, DeepSpeed)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 fedma \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fedma
COPY --from=build /opt/fedma /opt/fedma
# Models load from local paths only (baked in below /models or mounted), never from a hub.
ENV PATH=/opt/fedma/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HOME=/tmp FEDMA_CACHE=/tmp/fedma-cache
USER 10001:10001
EXPOSE 9400
ENTRYPOINT []
CMD ["fedma", "--help"]
