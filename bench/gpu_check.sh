#!/usr/bin/env bash
# One prepared GPU check (fits in 8 minutes on one H100-class GPU, no network, no trl/mlflow/prefect/
# dvc/datatrove needed): gpu-small pretraining steps in bf16 with tokens/s and MFU, the smollm2-gpu
# profile's SFT steps with tokens/s; one table on stdout, the same as JSON. See bench/gpu_check.py.
#   bash bench/gpu_check.sh [--out gpu_check.json] [--pretrain-steps 30] [--sft-steps 20]
#   bash bench/gpu_check.sh --dry          # CPU, toy sizes: checks that the script runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec timeout 480 "$PYTHON" bench/gpu_check.py "$@"
