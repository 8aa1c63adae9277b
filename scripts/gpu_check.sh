#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU"): compiled kernels against their twins, the kernel
# benchmark against SGLang's, the engine on CUDA. Under 5 minutes on one GPU.
# Run on the GPU machine with its own python3, from the repository root:
#   bash scripts/gpu_check.sh [OUT_DIR]
# Carry .cache/sglang-0.5.23/reject_sampling.py (made by `make test`) for SGLang's kernel as a peer.
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 290 python3 scripts/gpu_check.py "${1:-${OUT:-.}}"
