#!/usr/bin/env bash
# The GPU checks of issue 7 as one prepared script, for a session lent a GPU (device tool, ~6 min):
#   run(command="bash bench/gpu_check.sh", timeout_s=540)
# Writes into $OUT (or bench/results/gpu): train_step_*.json/.png and the CUDA torch-engine test log.
# Needs only what the GPU image has (torch+CUDA, onnx, onnxruntime, safetensors, tokenizers, tqdm).
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
# ds2 training step: fp32 vs FP16 AMP vs fused AdamW vs cudnn.benchmark, two batch sizes
python bench/train_step.py --preset ds2 --batch 64 --audio-s 8 --steps 15 --warmup 5 --out "$OUT/train_step_b64.json"
python bench/train_step.py --preset ds2 --batch 256 --audio-s 8 --steps 10 --warmup 3 \
    --variants amp-fused,amp-cudnn-bench --out "$OUT/train_step_b256.json"
# the torch engine on CUDA: FP16 autocast + CUDA graphs vs CPU FP32 (skipped where pytest is missing)
if python -c "import pytest" 2>/dev/null; then
    python -m pytest -q -p no:cacheprovider tests/engines/test_torch_engine.py 2>&1 | tee "$OUT/torch_engine_tests.log"
else
    echo "pytest is not installed on this machine: torch-engine tests not run" | tee "$OUT/torch_engine_tests.log"
fi
