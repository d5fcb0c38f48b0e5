#!/usr/bin/env bash
# Install torchrec_onerec and its tested dependency stack into a virtualenv.
#
# Usage: bash scripts/install.sh [VENV_DIR] [EXTRAS]     (defaults: .venv, dev)
#
# torchrec declares the CUDA `fbgemm-gpu` package as a requirement, so on a CPU machine it is installed
# with --no-deps after its real requirements, with `fbgemm-gpu-cpu` in place of `fbgemm-gpu`. Each fbgemm
# release loads only with the torch minor release it was built for: keep the three pins together.
set -euo pipefail

VENV="${1:-.venv}"
EXTRAS="${2:-dev}"
PYTHON="${PYTHON:-python3.11}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TORCH_VERSION=2.13.0
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --no-cache-dir)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "[install] CUDA device found: torch==$TORCH_VERSION (CUDA build), fbgemm-gpu==$FBGEMM_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION" "fbgemm-gpu==$FBGEMM_VERSION"
else
  echo "[install] no CUDA device: torch==$TORCH_VERSION (CPU build), fbgemm-gpu-cpu==$FBGEMM_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION" "fbgemm-gpu-cpu==$FBGEMM_VERSION"
fi
# torchrec's own runtime requirements, then torchrec itself without its CUDA fbgemm-gpu requirement.
"${PIP[@]}" tensordict==0.15.3 torchmetrics==1.0.3 pyre-extensions
"${PIP[@]}" --no-deps "torchrec==$TORCHREC_VERSION"
"${PIP[@]}" -e "$ROOT[$EXTRAS]"
"$VENV/bin/python" -c "import torch, torchrec, fbgemm_gpu, torchrec_onerec; print('[install] ok: torch', torch.__version__, 'torchrec', torchrec.__version__, 'torchrec_onerec', torchrec_onerec.__version__)"
