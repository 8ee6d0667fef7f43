#!/usr/bin/env bash
# The GPU check (issue #39), about 8 minutes on one H100: the real-size SD 1.5 and SDXL architectures (random
# weights, benchmarks/real_size.py) in float16 at their native resolution (512 and 1024 px, 20 steps): the whole sweep
# against the plain loop of pipeline calls, interleaved, with the allocator's peak memory of each, the batch the
# memory budget chose (auto on CUDA) and a budget of three samples; and the batched sweep's pixels against the plain
# calls at the engine's float16 tolerance (img2img_lab.engine.batched.BATCHED_TOLERANCE). Paste its output into
# docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh            # from a checkout after `make install`
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU: this check needs one')"
HF_HUB_OFFLINE=1 timeout 480 "$PYTHON" benchmarks/real_size.py --arch sd15,sdxl --device cuda --dtype float16 \
    --size 0 --steps 20 --pairs 3 --budget --threads "$(nproc)"
