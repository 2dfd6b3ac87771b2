# chatforge worker image: the repo and its environment, installed as `make install` does
# (pip install -c constraints.txt -e ".[dev]"), for a Prefect worker or a Kubernetes job of a pool.
#
#   docker build -t chatforge:cpu .                                   # CPU: torch 2.13.0 CPU wheel
#   docker build -t chatforge:cuda --build-arg VARIANT=cuda .         # CUDA: torch 2.13.0 from PyTorch's cu index
#
# The image carries the git checkout (.git included): a stage run checks that the worker's commit is
# the pipeline's, and DVC needs the repo. Build it from the commit you run; docs/across-machines.md.
ARG VARIANT=cpu
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT
# torch's wheel index per variant; the CPU index keeps the CUDA wheels (GBs of nvidia-*) out of the CPU image.
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu130

RUN apt-get update && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    CHATFORGE_ROOT=/opt/chatforge PYTHONPATH=/opt/chatforge \
    DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=False PREFECT_LOGGING_EXTRA_LOGGERS=chatforge,stages
WORKDIR /opt/chatforge

# Dependencies first (a layer that changes only with pyproject.toml / constraints.txt).
COPY pyproject.toml constraints.txt README.md ./
RUN if [ "$VARIANT" = cuda ]; then index="$TORCH_INDEX_CUDA"; else index="$TORCH_INDEX_CPU"; fi \
    && pip install -c constraints.txt --extra-index-url "$index" torch==2.13.0 \
    && mkdir -p chatforge stages flows && touch chatforge/__init__.py stages/__init__.py flows/__init__.py \
    && pip install -c constraints.txt --extra-index-url "$index" -e ".[dev]"

COPY . .
RUN pip install --no-deps -e . && git config --global --add safe.directory /opt/chatforge

# A worker of a pool: `docker run ... chatforge:cpu prefect worker start --pool cpu`
CMD ["prefect", "worker", "start", "--pool", "cpu"]
