#!/usr/bin/env bash
# The real speech training loop (training.speech_ctc under torchrun) on one CUDA GPU, for a session lent
# one (device tool, ~2 min; launch it from the throwaway branch bench/gpu_check.sh describes):
#   run(command="bash bench/gpu_train_check.sh", carry=[".gpu/corpus", ".whl"], timeout_s=300)
# - FP16 AMP with dynamic loss scaling, default (fast) mode, two epochs;
# - deterministic mode twice with the same seed: the weights must be bitwise identical (the CTC loss then
#   runs on the CPU: CUDA's CTC backward has no deterministic kernel). Exact resume is tested in CI (CPU).
# Needs: .gpu/corpus, a tiny corpus (`nui data speech --out .gpu/corpus --sentences 300 --train-clips 96
#   --dev-clips 16 --test-clips 8 --augment-copies 0 --seed 1`), and in .whl/ the cp312 wheels the image
#   lacks: soundfile, cffi, pycparser, soxr, jiwer, rapidfuzz. One GPU, so no NCCL process group forms
#   (torchrun with one process); the NCCL path needs two GPUs.
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_train_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
C=.gpu/corpus
train() {
    torchrun --nproc_per_node=1 -m training.speech_ctc --recipe training/speech_ctc/recipes/tiny.yaml \
        data.train_manifest=$C/train.jsonl data.dev_manifest=$C/dev.jsonl model.preset=small data.batch_size=16 \
        run.device=cuda run.amp=auto run.log_every_steps=3 "$@" 2>&1 | grep -v -e 'it/s\]' -e 's/it\]' | tail -6
}
compare() {  # the two runs' latest checkpoints, tensor by tensor (the files' headers may differ)
    python3 - "$1" "$2" <<'PY'
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file
runs = [Path(r) / "checkpoints" for r in sys.argv[1:]]
try:
    a, b = (load_file(str(c / (c / "latest").read_text().strip() / "model.safetensors")) for c in runs)
except OSError as e:
    sys.exit(f"no checkpoint: {e}")
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"{len(a)} tensors of {runs[0].parent.name} and {runs[1].parent.name}: "
      + ("bitwise identical" if same else "DIFFERENT"))
PY
}
# why deterministic runs compute the CTC loss on the CPU: CUDA's CTC backward refuses deterministic mode
python3 -c "
import torch, torch.nn.functional as F
torch.use_deterministic_algorithms(True)
lp = torch.randn(50, 2, 29, device='cuda', requires_grad=True).log_softmax(-1)
loss = F.ctc_loss(lp, torch.randint(1, 29, (2, 10), device='cuda'), torch.tensor([50, 40]), torch.tensor([10, 8]))
try:
    loss.backward()
    print('CUDA CTC backward ran in deterministic mode')
except RuntimeError as e:
    print('CUDA CTC backward in deterministic mode:', str(e)[:100])
"
train run.deterministic=false run.out_dir=/tmp/gt/amp
train run.deterministic=true run.out_dir=/tmp/gt/det1
train run.deterministic=true run.out_dir=/tmp/gt/det2
compare /tmp/gt/det1 /tmp/gt/det2
compare /tmp/gt/amp /tmp/gt/det1
