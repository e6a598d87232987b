# syntax=docker/dockerfile:1
# Silo training and aggregation Jobs: torch (CUDA) + DeepSpeed.
#   docker build -f images/trainer.Dockerfile -t ghcr.io/fedma/trainer:0.1.0 .
#
# CUDA comes with the torch wheel (its runtime, cuBLAS, cuDNN and NCCL as pip packages); the
# only CUDA the node provides is its driver (>= 580 for CUDA 13.0). So the base is plain
# Ubuntu, and the one CUDA flavour in the image is the wheel's, pinned and checked below.
# DeepSpeed is installed without prebuilt ops (DS_BUILD_OPS=0): fedma's engines give it a
# torch AdamW, and ZeRO-3 as fedma uses it needs no compiled op, so nothing builds here (a
# pip build runs in an isolated environment without torch, where DS_BUILD_* flags silently
# build nothing) and nothing compiles at run time on the read-only root filesystem.
FROM ubuntu:24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's archive drops superseded versions, so exact apt pins break rebuilds; the base image
# tag pins the release and Python comes from it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY fedma ./fedma
COPY operator ./operator
ENV DS_BUILD_OPS=0 TORCH_CUDA_FLAVOUR=cu130
RUN python3.12 -m venv /opt/fedma \
 && /opt/fedma/bin/pip install --index-url https://download.pytorch.org/whl/${TORCH_CUDA_FLAVOUR} \
      "torch==2.13.0+${TORCH_CUDA_FLAVOUR}" \
 && /opt/fedma/bin/pip install -c constraints.txt ".[deepspeed,s3]" \
 && /opt/fedma/bin/python -c "import torch, deepspeed, fedma.cli; \
assert torch.version.cuda == '13.0', torch.version.cuda; \
assert torch.__version__ == '2.13.0+cu130', torch.__version__"

FROM ubuntu:24.04
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
