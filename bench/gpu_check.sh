#!/usr/bin/env bash
# The GPU checks of issue 7 as one prepared script, for a session lent a GPU (device tool, ~8 min on an H200):
#   run(command="bash bench/gpu_check.sh", carry=[".gpu", ".whl"], timeout_s=600)
# Writes gpu_check.log and gpu_results.tgz (train_step_*.json/.png, gpu_precision.json, the torch-engine test
# log; re-packed after each step, so a run cut short still returns what it finished) into $OUT, or
# bench/results/gpu. The tool returns at most 8 files, hence the archive.
# Needs only what the GPU image has (torch+CUDA, onnx, onnxruntime, safetensors, tokenizers, pillow, tqdm)
# plus what travels beside the checkout, both ignored by git (.git/info/exclude):
#   .whl/  jiwer and rapidfuzz wheels for the image's Python 3.12 (the FP16 gates' WER)
#   .gpu/  torch-engine versions of the bundled models and their staged inputs (bench/gpu_precision.py's
#          docstring has the commands).
# The tool sends the checkout's tracked files too, and model_repository/ alone nearly fills its 64 MiB: run
# from a throwaway branch that drops it (`git checkout -b gpu-run && git rm -rq model_repository docs
# bench/results && git commit -qm gpu-run`), then `git checkout main && git branch -D gpu-run`.
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
# The ds2 step before the width fix (GRU 1100, not a multiple of 8): FP32 vs FP16 AMP vs fused AdamW vs
# cudnn.benchmark at batch 64, the FP16 variants at 256 with a kernel profile, and at 512
step --hidden 1100 --batch 64 --steps 15 --warmup 5 --out "$RES/train_step_h1100x5_b64.json"
# FP16 vs FP32 of the bundled models' torch engines on this GPU, and the torch-engine tests (CUDA graphs)
if [ -d .gpu/repo ]; then
    python3 bench/gpu_precision.py run --repo .gpu/repo --data .gpu/data --out "$RES/gpu_precision.json" 2>&1 \
        | grep -v ' INFO '
    save
fi
python3 -m pytest -q -p no:cacheprovider tests/engines/test_torch_engine.py 2>&1 | tee "$RES/torch_engine_tests.log" | tail -5
save
step --hidden 1100 --batch 256 --steps 10 --warmup 3 --variants amp,amp-fused,amp-cudnn-bench --profile \
    --out "$RES/train_step_h1100x5_b256.json"
step --hidden 1100 --batch 512 --steps 8 --warmup 3 --variants amp-fused,amp-cudnn-bench --out "$RES/train_step_h1100x5_b512.json"
# Sizing: widths that are multiples of 64/128 (the preset's 1152 among them) and a wide 3-layer stack
for cfg in "1024 5 256" "1152 5 256" "1152 5 512" "1280 5 256" "1536 5 256" "1792 5 384" "2048 5 256" "2560 3 256" \
           "2560 3 512"; do
    read -r h l b <<<"$cfg"
    step --hidden "$h" --layers "$l" --batch "$b" --steps 8 --warmup 3 --variants amp-fused \
        --out "$RES/train_step_h${h}x${l}_b${b}.json"
done
python3 bench/train_step_summary.py "$RES" --out "$RES/train_step_summary.json"
save
