#!/usr/bin/env bash
# GPU path check (a lent GPU, < 5 min): SD-1.5-sized random-init UNet, VAE and text encoder at 512 px,
# HOLA on, DeepSpeed ZeRO-2, bf16 -- bench/train_step.py's three ratios at that size, plus peak memory.
# Packages the GPU image lacks can travel as wheels in .whl/ (see the device notes); they are installed
# into /tmp/site first when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, diffusers, deepspeed; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'deepspeed', deepspeed.__version__)"
"$PY" bench/train_step.py --preset sd15 --batch "${BATCH:-8}" --bf16 --deepspeed zero2 \
  --warmup "${WARMUP:-3}" --steps "${STEPS:-8}" --rounds "${ROUNDS:-3}" "$@"
