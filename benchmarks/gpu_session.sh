#!/usr/bin/env bash
# One prepared GPU session (a lent H100/H200 with torch + Triton but no nnU-Net): the scan backends' parity,
# speed and bandwidth, a 3D network step at 128^3 (benchmarks/gpu_check.py), and the training-step comparison
# with nnU-Net's default network (benchmarks/train_step.py). Pure-Python wheels the machine lacks
# (dynamic-network-architectures) are expected in .whl/ beside the repository. Results go to $OUT (or ./gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
python3 benchmarks/gpu_check.py --out "$out/gpu_check.md" --deadline-s "${GPU_CHECK_DEADLINE_S:-300}" 2>&1 \
  | tee "$out/gpu_check.log"
python3 benchmarks/train_step.py --device cuda --patch 128 128 128 --batch 2 --repeats 5 2>&1 \
  | tee "$out/train_step.md"
