#!/usr/bin/env bash
# The GPU checks of issue 7 as one prepared script, for a session lent a GPU (device tool, ~6 min):
#   run(command="bash bench/gpu_check.sh", carry=[".gpu", ".whl"], timeout_s=540)
# Writes gpu_check.log and gpu_results.tgz (train_step_*.json/.png, gpu_precision.json, the torch-engine test
# log; re-packed after each step, so a run cut short still returns what it finished) into $OUT, or
# bench/results/gpu. The tool returns at most 8 files, hence the archive.
# Needs only what the GPU image has (torch+CUDA, onnx, onnxruntime, safetensors, tokenizers, pillow, tqdm)
# plus what travels beside the checkout, both ignored by git (.git/info/exclude):
#   .whl/  jiwer and rapidfuzz wheels for the image's Python 3.12 (the FP16 gates' WER)
#   .gpu/  torch-engine versions of the bundled models and their staged inputs (bench/gpu_precision.py's
#          docstring has the commands); the checkout's model_repository/ stays behind, or the tree
#          is over the tool's 64 MiB.
set -u
OUT=${OUT:-bench/results/gpu}
RES=/tmp/gpu_results
mkdir -p "$OUT" "$RES"
exec > >(tee "$OUT/gpu_check.log") 2>&1
save() { tar czf "$OUT/gpu_results.tgz" -C "$(dirname "$RES")" "$(basename "$RES")"; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
step() {
    python3 bench/train_step.py --preset ds2 --audio-s 8 "$@" 2>&1 | tr '\r' '\n' | grep -v -e 'it/s\]$' -e '^\s*$'
    save
}
# ds2 (hidden 1100 x 5): FP32 vs FP16 AMP vs fused AdamW vs cudnn.benchmark at batch 64, then bigger batches
step --batch 64 --steps 15 --warmup 5 --out "$RES/train_step_b64.json"
# FP16 vs FP32 of the bundled models' torch engines on this GPU, and the torch-engine tests (CUDA graphs)
if [ -d .gpu/repo ]; then
    python3 bench/gpu_precision.py run --repo .gpu/repo --data .gpu/data --out "$RES/gpu_precision.json" 2>&1 \
        | grep -v ' INFO '
    save
fi
python3 -m pytest -q -p no:cacheprovider tests/engines/test_torch_engine.py 2>&1 | tee "$RES/torch_engine_tests.log" | tail -5
save
step --batch 256 --steps 10 --warmup 3 --variants amp,amp-fused,amp-cudnn-bench --profile --out "$RES/train_step_b256.json"
step --batch 512 --steps 8 --warmup 3 --variants amp-fused,amp-cudnn-bench --out "$RES/train_step_b512.json"
# sizing: GRU widths that are multiples of 64/128 (1100 is not a multiple of 8), and a wide 3-layer stack
step --batch 256 --steps 10 --warmup 3 --hidden 1024 --variants amp-fused,amp-cudnn-bench --out "$RES/train_step_h1024.json"
step --batch 256 --steps 10 --warmup 3 --hidden 1280 --variants amp-fused,amp-cudnn-bench --out "$RES/train_step_h1280.json"
step --batch 256 --steps 8 --warmup 3 --hidden 2560 --layers 3 --variants amp-cudnn-bench --profile \
    --out "$RES/train_step_h2560.json"
