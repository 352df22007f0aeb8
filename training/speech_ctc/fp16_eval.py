"""Greedy WER of a speech checkpoint with FP16 *arithmetic* (torch FP16 conv/GRU/linear, FP32 islands) vs FP32.

    nice -n 10 nui eval speech-fp16 --checkpoint runs/speech_small_ft \
        --manifest data/speech/dev.jsonl --limit 40 [--out docs/speech_ctc/precision/fp16_arith.json]

Complements the FP16 engine gate (engines/fp16.py), which on ONNX Runtime's CPU provider measures FP16
storage with FP32 arithmetic: here the recurrent layers accumulate in FP16 themselves (training/common/
half.py), the question being whether the GRU's recurrence drifts. The islands are the engine's: the
featurizer, the utterance normalisation, LayerNorms and the log-softmax. One clip at a time, one thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import jiwer
import torch
from tqdm import tqdm

from models.ctc_text import greedy_decode, normalize_text
from training.common.half import half_with_fp32_islands
from training.speech_ctc.manifest import load_audio, read_manifest
from training.speech_ctc.model_io import load_model

ISLANDS = ("featurizer", "feature_norm")  # engines/fp16.py PLANS["speech_ctc"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval speech-fp16", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder, checkpoint folder or .safetensors")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--out", type=Path, help="write the figures as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        model, _ = load_model(args.checkpoint)
        utts = [u for u in read_manifest(args.manifest)[: args.limit] if normalize_text(u.text)]
        clips = [load_audio(u.audio_filepath) for u in utts]
    except (OSError, ValueError) as e:
        print(f"nui eval speech-fp16: {e}", file=sys.stderr)
        return 1
    half = half_with_fp32_islands(copy.deepcopy(model), ISLANDS)
    refs = [normalize_text(u.text) for u in utts]
    hyp32: list[str] = []
    hyp16: list[str] = []
    with torch.no_grad():
        for clip in tqdm(clips, desc="clips", unit="clip"):
            audio, lengths = torch.from_numpy(clip)[None], torch.tensor([len(clip)])
            for m, hyps in ((model, hyp32), (half, hyp16)):
                lp, n = m(audio, lengths)
                hyps.append(greedy_decode(lp[0, : int(n[0])].float().numpy()))
    result = {"clips": len(clips), "greedy_wer_fp32": float(jiwer.wer(refs, hyp32)),
              "greedy_wer_fp16_arith": float(jiwer.wer(refs, hyp16)),
              "transcripts_equal": sum(a == b for a, b in zip(hyp32, hyp16, strict=True)),
              "islands": [*ISLANDS, "LayerNorm", "log_softmax"]}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
