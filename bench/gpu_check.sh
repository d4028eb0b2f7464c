#!/usr/bin/env bash
# The GPU checks of issue 14, one command from the repo root (under 10 minutes on one GPU):
#   bash bench/gpu_check.sh                        # train step AMP+channels_last vs fp32, inference bf16 vs the
#                                                  # baseline loop, crop_faces.py --device cuda vs cpu, torchrun
#                                                  # train.py and an nccl group; every figure in bench/out/gpu.json
#   bash bench/gpu_check.sh --device cpu --quick   # a dry run of the same plumbing on CPU (no usable figures)
# Uses .venv/bin/python when there is one, else python3 with torch installed. Without a GPU it says so in one
# line and exits 2. The steps are in bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
exec "$PY" bench/gpu_check.py "$@"
