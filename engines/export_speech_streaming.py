"""Export a unidirectional speech CTC model as a stateful streaming ONNX engine, behind a parity gate.

    nui export speech --checkpoint runs/speech_small_streaming --repo model_repository \
        --dev-manifest data/speech/dev.jsonl --lm-dir data/speech/lm [--chunk-ms 120]

(a unidirectional checkpoint is exported this way by default, as model `speech_ctc_streaming`).

The engine runs one fixed-size chunk for a batch of streams (`models.speech_ctc_streaming`):
inputs `audio_chunk` float32 [batch, chunk_samples], `stream_samples` int64 [batch] (-1 until the
stream's end is known) and one tensor per state; outputs `log_probs` float32 [batch, chunk_frames, 29],
`frame_index` and `stream_frames` int64 [batch], and each state as `<name>_out`. The manifest lists the
state tensors (name, dtype, shape without the batch axis) and the chunk size under
`extras["streaming"]`, so a server can build and stack states without torch.

Parity gate: every clip (dev clips, or seeded noise) is streamed through ONNX Runtime, all clips as
one batch of streams of different lengths, and must give the offline torch forward's log-probs within
`atol` on every frame and the same greedy transcript. Nothing is published when it fails.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from engines.export_speech import DEFAULT_ATOL, OPSET, ParityError, ParityReport, noise_clips
from engines.manifest import Manifest, TensorSpec, file_digests, staged_version, write_manifest
from models.ctc_text import VOCAB, greedy_decode
from models.speech_ctc import SpeechCTC
from models.speech_ctc_streaming import StreamingSpeechCTC

logger = logging.getLogger(__name__)

TASK = "speech_ctc_streaming"
DEFAULT_MODEL_NAME = "speech_ctc_streaming"
DEFAULT_CHUNK_MS = 120.0
STATE_OUT_SUFFIX = "_out"
_DTYPES = {torch.float32: "float32", torch.int64: "int64"}


def chunk_frames_for(model: SpeechCTC, chunk_ms: float) -> int:
    """Output frames per chunk closest to `chunk_ms` (at least one)."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    return max(1, round(chunk_ms / 1000.0 / model.cfg.frame_s))


def tensor_specs(step: StreamingSpeechCTC) -> tuple[list[TensorSpec], list[TensorSpec]]:
    states = [TensorSpec(s.name, _DTYPES[s.dtype], ["batch", *s.shape]) for s in step.state_specs()]
    inputs = [TensorSpec("audio_chunk", "float32", ["batch", step.chunk_samples]),
              TensorSpec("stream_samples", "int64", ["batch"]), *states]
    outputs = [TensorSpec("log_probs", "float32", ["batch", step.chunk_frames, len(VOCAB)]),
               TensorSpec("frame_index", "int64", ["batch"]), TensorSpec("stream_frames", "int64", ["batch"]),
               *(TensorSpec(s.name + STATE_OUT_SUFFIX, s.dtype, s.shape) for s in states)]
    return inputs, outputs


def export_onnx(step: StreamingSpeechCTC, path: Path, opset: int = OPSET) -> None:
    """Trace-export one step with a dynamic batch axis (the chunk loop is unrolled: fixed shapes)."""
    step = step.eval().float().cpu()
    inputs, outputs = tensor_specs(step)
    batch = 2
    example = (torch.randn(batch, step.chunk_samples) * 0.1, torch.tensor([-1, step.chunk_samples // 2]),
               *step.initial_state(batch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices about the unrolled GRU steps
        torch.onnx.export(
            step, example, str(path), opset_version=opset, dynamo=False,
            input_names=[t.name for t in inputs], output_names=[t.name for t in outputs],
            dynamic_axes={t.name: {0: "batch"} for t in [*inputs, *outputs]},
        )


def stream_onnx(session: ort.InferenceSession, inputs: list[TensorSpec], chunk_samples: int,
                chunk_frames: int, clips: list[np.ndarray]) -> list[np.ndarray]:
    """Stream every clip through the engine, all clips as one batch of streams, end and flush included:
    each clip's valid log-probs (T', V)."""
    b = len(clips)
    state = {t.name: np.zeros((b, *(int(d) for d in t.shape[1:])), dtype=t.dtype) for t in inputs[2:]}
    rows: list[list[np.ndarray]] = [[] for _ in clips]
    done = np.zeros(b, dtype=bool)
    offset = 0
    while not done.all():
        chunk = np.zeros((b, chunk_samples), dtype=np.float32)
        for i, clip in enumerate(clips):
            piece = clip[offset: offset + chunk_samples]
            chunk[i, : len(piece)] = piece
        offset += chunk_samples
        known = np.array([len(c) if offset >= len(c) else -1 for c in clips], dtype=np.int64)
        out = session.run(None, {"audio_chunk": chunk, "stream_samples": known, **state})
        log_probs, frame_index, stream_frames = out[:3]
        state = dict(zip(state, out[3:], strict=True))
        for i in range(b):
            first, end = int(frame_index[i]), int(stream_frames[i])
            lo, hi = max(0, -first), chunk_frames if end < 0 else min(chunk_frames, end - first)
            if not done[i] and hi > lo:
                rows[i].append(log_probs[i, lo:hi])
            done[i] |= end >= 0 and first + chunk_frames >= end
    return [np.concatenate(r) if r else np.zeros((0, len(VOCAB)), np.float32) for r in rows]


def check_parity(step: StreamingSpeechCTC, onnx_path: Path, clips: list[np.ndarray],
                 atol: float = DEFAULT_ATOL) -> ParityReport:
    """ONNX streamed log-probs and greedy text vs the offline torch forward of each whole clip."""
    model = step.model.eval().float().cpu()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs, _ = tensor_specs(step)
    streamed = stream_onnx(session, inputs, step.chunk_samples, step.chunk_frames, clips)
    report = ParityReport(clips=0, max_abs_diff=0.0, atol=atol, transcripts_equal=0)
    for clip, got in zip(clips, streamed, strict=True):
        with torch.no_grad():
            lp, n = model(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        want = lp[0, : int(n[0])].numpy()
        if want.shape != got.shape:
            raise ParityError(f"streamed {got.shape[0]} frames for a clip of {len(clip)} samples; the offline "
                              f"forward gives {want.shape[0]}")
        report.max_abs_diff = max(report.max_abs_diff, float(np.abs(want - got).max()) if len(got) else 0.0)
        ta, tb = greedy_decode(want), greedy_decode(got)
        if ta == tb:
            report.transcripts_equal += 1
        else:
            report.mismatches.append((ta, tb))
        report.clips += 1
    return report


def export_speech_ctc_streaming(model: SpeechCTC, repo: Path, model_name: str = DEFAULT_MODEL_NAME,
                                version: int | None = None, *, chunk_ms: float = DEFAULT_CHUNK_MS,
                                dev_clips: list[np.ndarray] | None = None, atol: float = DEFAULT_ATOL,
                                source_checkpoint_sha256: str = "", extra_files: dict[str, Path] | None = None,
                                extras: dict[str, Any] | None = None) -> tuple[Path, Manifest]:
    """Export, gate and publish the streaming engine of a unidirectional `model` as
    `<repo>/<model_name>/<version>/`. Raises ValueError for a bidirectional model, ParityError (and
    publishes nothing) when the gate fails."""
    step = StreamingSpeechCTC(model.eval().float().cpu(), chunk_frames_for(model, chunk_ms))
    inputs, outputs = tensor_specs(step)
    with staged_version(repo, model_name, version) as (tmp, final):
        export_onnx(step, tmp / "model.onnx")
        clips = dev_clips if dev_clips else noise_clips(sample_rate_hz=model.cfg.sample_rate_hz)
        clips = [c for c in clips if len(c) >= model.cfg.min_samples]
        report = check_parity(step, tmp / "model.onnx", clips, atol=atol)
        logger.info("streaming parity: %d clips, max |diff| %.2e (atol %.0e), %d/%d transcripts equal",
                    report.clips, report.max_abs_diff, atol, report.transcripts_equal, report.clips)
        if not report.passed:
            raise ParityError(f"streaming parity gate failed: max |diff| {report.max_abs_diff:.3e} "
                              f"(atol {atol:.0e}), {len(report.mismatches)} transcript mismatches, "
                              f"e.g. {report.mismatches[:2]}")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        streaming = {
            "chunk_samples": step.chunk_samples, "chunk_frames": step.chunk_frames,
            "chunk_ms": 1000.0 * step.chunk_samples / model.cfg.sample_rate_hz,
            "lag_frames": step.lag_frames, "state_out_suffix": STATE_OUT_SUFFIX,
            "state": [{"name": t.name, "dtype": t.dtype, "shape": t.shape[1:]} for t in inputs[2:]],
        }
        manifest = Manifest(
            model=model_name, task=TASK, config=model.cfg.to_dict(), inputs=inputs, outputs=outputs,
            files=file_digests(tmp), engine="onnxruntime", precision="fp32", opset=OPSET,
            source_checkpoint_sha256=source_checkpoint_sha256,
            parity={**report.to_dict(), "dev_data": bool(dev_clips), "compared_with": "offline torch forward"},
            extras={"frame_s": model.cfg.frame_s, "streaming": streaming, **(extras or {})},
        )
        write_manifest(tmp, manifest)
    return final, manifest
