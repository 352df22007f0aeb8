"""`nui export speech`: checkpoint -> ONNX engine in a model repository, behind the parity gate.

    nui export speech --checkpoint runs/speech_small --repo model_repository \
        --dev-manifest data/speech/dev.jsonl --lm-dir data/speech/lm [--version N] [--precision fp16] \
        [--engine tensorrt --timing-cache runs/trt.cache | --engine torch]

--checkpoint takes a run folder (its latest checkpoint), a checkpoint folder, or a model.safetensors.
A unidirectional (streaming preset) checkpoint is exported as a stateful streaming engine, model
`speech_ctc_streaming` by default, with chunks of --chunk-ms (engines/export_speech_streaming.py);
--no-streaming exports it as an offline engine instead.
This is glue between training/ (checkpoint and manifest readers) and engines/ (export), which must not
import each other.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from engines.export_speech import DEFAULT_ATOL, FP16_WEIGHTS_ATOL, ParityError, export_speech_ctc, noise_clips
from engines.export_speech_streaming import DEFAULT_CHUNK_MS, export_speech_ctc_streaming
from engines.fp16 import Fp16GateError, fp32_staging, island_summary, publish_fp16
from engines.fp16_parity import speech_check
from engines.manifest import sha256_file
from engines.tensorrt_build import publish_tensorrt
from engines.torch_build import publish_torch, speech_feeds
from nui.engine_options import add_engine_options, check_engine_options
from training.common.checkpoint import save_weights
from training.speech_ctc.manifest import load_audio, read_manifest
from training.speech_ctc.model_io import MODEL_NAME, load_model

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui export speech", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repo", type=Path, required=True, help="model repository folder")
    p.add_argument("--model-name", default=None,
                   help="default: speech_ctc, or speech_ctc_streaming for a streaming engine")
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                   help="export a stateful streaming engine (default: when the model is unidirectional)")
    p.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_MS,
                   help="audio per streaming engine call (rounded to whole output frames)")
    p.add_argument("--version", type=int, default=None, help="default: next free version")
    p.add_argument("--dev-manifest", type=Path, help="clips for the parity gate (default: seeded noise)")
    p.add_argument("--dev-limit", type=int, default=64)
    p.add_argument("--lm-dir", type=Path, help="folder with lm.arpa and unigrams.txt (nui data lm)")
    p.add_argument("--decoder", type=Path,
                   help="beam options tuned on dev: a JSON of BeamOptions fields, or `nui eval speech --out` results")
    p.add_argument("--with-weights", action="store_true",
                   help="also publish the weights as FP16 safetensors (weights.fp16.safetensors), for fine-tuning")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    add_engine_options(p, ["fp32", "fp16-weights", "fp16"],
                       "fp16-weights: FP32 arithmetic, weights stored as FP16 (half the file; the bundled CPU engine). "
                       "fp16: convert the gated FP32 engine to FP16 with FP32 islands (engines/fp16.py) and gate it on "
                       "the dev clips against the FP32 engine (greedy WER, transcripts, probabilities)", refit=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_engine_options(args)
        model, weights = load_model(args.checkpoint)
        clips, texts = None, None
        if args.dev_manifest:
            utts = read_manifest(args.dev_manifest)[: args.dev_limit]
            clips = [load_audio(u.audio_filepath) for u in utts]
            texts = [u.text for u in utts]
        extra_files: dict[str, Path] = {}
        extras: dict[str, Any] = {}
        if args.lm_dir:
            extra_files = {"lm.arpa": args.lm_dir / "lm.arpa", "unigrams.txt": args.lm_dir / "unigrams.txt"}
            extras["lm"] = {"arpa": "lm.arpa", "unigrams": "unigrams.txt"}
        if args.with_weights:
            fp16 = Path(tempfile.mkdtemp()) / "weights.fp16.safetensors"
            save_weights(fp16, model, MODEL_NAME, model.cfg.to_dict(), dtype=torch.float16)
            extra_files["weights.fp16.safetensors"] = fp16
        if args.decoder:
            decoder = json.loads(args.decoder.read_text())
            # `nui eval speech --out` results hold the tuned options under "decoder".
            extras["decoder"] = decoder.get("decoder", decoder)
        streaming = not model.cfg.bidirectional if args.streaming is None else args.streaming
        common: dict[str, Any] = dict(dev_clips=clips, atol=args.atol, source_checkpoint_sha256=sha256_file(weights),
                                      extra_files=extra_files, extras=extras)
        if args.engine == "torch":
            if streaming:
                raise ValueError("--engine torch serves offline models; add --no-streaming")
            if args.precision == "fp16-weights":
                raise ValueError("--engine torch stores FP32 weights: use --precision fp16 (FP16 autocast) or fp32")
            with fp32_staging() as stage:
                onnx_dir, _ = export_speech_ctc(model, stage, "speech_ctc", **common)
                path, manifest = publish_torch(
                    onnx_dir, model, args.repo, args.model_name or "speech_ctc", args.version, precision=args.precision,
                    feeds={None: speech_feeds(clips or noise_clips(sample_rate_hz=model.cfg.sample_rate_hz))})
        elif streaming:
            if args.precision != "fp32":
                raise ValueError("--precision fp16 is not available for streaming engines yet; add --no-streaming")
            path, manifest = export_speech_ctc_streaming(
                model, args.repo, args.model_name or "speech_ctc_streaming", args.version,
                chunk_ms=args.chunk_ms, **common)
        elif args.precision == "fp16":
            with fp32_staging() as fp32_repo:
                fp32_dir, _ = export_speech_ctc(model, fp32_repo, "speech_ctc", **common)
                gate, feeds = speech_check(clips or noise_clips(sample_rate_hz=model.cfg.sample_rate_hz), texts)
                fp16_repo = fp32_repo / "fp16" if args.engine == "tensorrt" else args.repo
                path, manifest = publish_fp16(fp32_dir, fp16_repo, args.model_name or "speech_ctc",
                                              args.version if fp16_repo == args.repo else None, gate, feeds)
                if args.engine == "tensorrt":
                    path, manifest = publish_tensorrt(path, args.repo, args.model_name or "speech_ctc", args.version,
                                                      timing_cache=args.timing_cache, refit=args.refit)
            print("\n".join(island_summary(manifest)))
        else:
            if args.precision == "fp16-weights":
                common.update(weights_dtype="float16", atol=max(args.atol, FP16_WEIGHTS_ATOL))
            path, manifest = export_speech_ctc(model, args.repo, args.model_name or "speech_ctc", args.version,
                                               **common)
    except (OSError, ValueError, ParityError, Fp16GateError) as e:
        print(f"nui export speech: {e}", file=sys.stderr)
        return 1
    print(f"published {path} (parity: {manifest.parity})")
    return 0
