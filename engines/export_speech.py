"""Export the speech CTC model to ONNX, gate it on parity with torch, publish it to a model repository.

    nui export speech --checkpoint runs/speech_small/checkpoints/latest --repo model_repository \
        --dev-manifest data/speech/dev.jsonl --lm-dir data/speech/lm

The engine takes raw audio: `audio` float32 [batch, samples] in [-1, 1] at the config's sample rate and
`audio_lengths` int64 [batch]; it returns `log_probs` float32 [batch, frames, 29] and `out_lengths`
int64 [batch]. An engine is published (renamed into `<repo>/<model>/<version>/`) only after the parity
gate passes: ONNX Runtime log-probs within `atol` of torch on every valid frame, and identical greedy
transcripts, on the dev clips given (or seeded noise when none are).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from engines.manifest import Manifest, TensorSpec, file_digests, staged_version, write_manifest
from engines.onnx_weights import weights_to_fp16
from models.ctc_text import greedy_decode
from models.speech_batch import pad_batch
from models.speech_ctc import SpeechCTC

logger = logging.getLogger(__name__)

OPSET = 17
DEFAULT_ATOL = 1e-3  # on log-probabilities; FP32 ORT vs torch differ by ~1e-5 in practice
# with weights stored as FP16 (engines/onnx_weights.py): measured 8.3e-3 on the small model's dev clips;
# identical greedy transcripts stay required
FP16_WEIGHTS_ATOL = 0.05
INPUTS = [TensorSpec("audio", "float32", ["batch", "samples"]), TensorSpec("audio_lengths", "int64", ["batch"])]
OUTPUTS = [TensorSpec("log_probs", "float32", ["batch", "frames", 29]),
           TensorSpec("out_lengths", "int64", ["batch"])]


class ParityError(RuntimeError):
    """The exported engine disagrees with the torch model; it was not published."""


@dataclass
class ParityReport:
    clips: int
    max_abs_diff: float
    atol: float
    transcripts_equal: int
    mismatches: list[tuple[str, str]] = field(default_factory=list)  # (torch, onnx) greedy transcripts

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"clips": self.clips, "max_abs_diff": self.max_abs_diff, "atol": self.atol,
                "transcripts_equal": self.transcripts_equal, "passed": self.passed}


def export_onnx(model: SpeechCTC, path: Path, opset: int = OPSET) -> None:
    """Trace-export with dynamic batch and time axes (TorchScript exporter: maps nn.GRU to ONNX GRU)."""
    model = model.eval().float().cpu()
    audio = torch.zeros(2, 16000)
    audio[0].normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    audio[1, :12000].normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([16000, 12000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GRU-with-batch_first and dynamic-axes notices
        torch.onnx.export(
            model, (audio, lengths), str(path), opset_version=opset, dynamo=False,
            input_names=[t.name for t in INPUTS], output_names=[t.name for t in OUTPUTS],
            dynamic_axes={"audio": {0: "batch", 1: "samples"}, "audio_lengths": {0: "batch"},
                          "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}},
        )


def _batches(clips: list[np.ndarray], max_batch: int) -> list[list[np.ndarray]]:
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    return [[clips[i] for i in order[k:k + max_batch]] for k in range(0, len(order), max_batch)]


def check_parity(model: SpeechCTC, onnx_path: Path, clips: list[np.ndarray], atol: float = DEFAULT_ATOL,
                 max_batch: int = 8) -> ParityReport:
    """Run torch and ONNX Runtime on the same padded batches; compare valid frames and greedy text."""
    model = model.eval().float().cpu()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report = ParityReport(clips=0, max_abs_diff=0.0, atol=atol, transcripts_equal=0)
    for group in _batches(clips, max_batch):
        audio, lengths = pad_batch(group)
        with torch.no_grad():
            t_lp, t_len = model(torch.from_numpy(audio), torch.from_numpy(lengths))
        o_lp, o_len = session.run(None, {"audio": audio, "audio_lengths": lengths})
        if not np.array_equal(t_len.numpy(), o_len):
            raise ParityError(f"output lengths differ: torch {t_len.tolist()} vs onnx {o_len.tolist()}")
        for i, n in enumerate(o_len.tolist()):
            a, b = t_lp[i, :n].numpy(), o_lp[i, :n]
            report.max_abs_diff = max(report.max_abs_diff, float(np.abs(a - b).max()) if n else 0.0)
            ta, tb = greedy_decode(a), greedy_decode(b)
            if ta == tb:
                report.transcripts_equal += 1
            else:
                report.mismatches.append((ta, tb))
            report.clips += 1
    return report


def noise_clips(n: int = 6, sample_rate_hz: int = 16000, seed: int = 0) -> list[np.ndarray]:
    """Seeded band-limited noise bursts of varied length, for a parity check when no dev data is given."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(sample_rate_hz * (0.5 + 0.7 * i))
        x = rng.standard_normal(length).astype(np.float32)
        x = np.convolve(x, np.ones(8, dtype=np.float32) / 8, mode="same") * 0.3
        out.append(x.astype(np.float32))
    return out


def export_speech_ctc(model: SpeechCTC, repo: Path, model_name: str = "speech_ctc", version: int | None = None,
                      *, dev_clips: list[np.ndarray] | None = None, atol: float = DEFAULT_ATOL,
                      source_checkpoint_sha256: str = "", extra_files: dict[str, Path] | None = None,
                      extras: dict[str, Any] | None = None, weights_dtype: str = "float32") -> tuple[Path, Manifest]:
    """Export, gate and publish `model` as `<repo>/<model_name>/<version>/` (default: next version).

    weights_dtype "float16" stores the weights as FP16 (half the file, FP32 arithmetic); pass
    atol=FP16_WEIGHTS_ATOL then (greedy transcripts must still be identical to torch's).
    extra_files: name -> file copied next to the engine and checksummed (e.g. the LM). Raises
    ParityError (and publishes nothing) when the gate fails.
    """
    with staged_version(repo, model_name, version) as (tmp, final):
        export_onnx(model, tmp / "model.onnx")
        if weights_dtype == "float16":
            weights_to_fp16(tmp / "model.onnx")
        elif weights_dtype != "float32":
            raise ValueError(f"weights_dtype must be float32 or float16, got {weights_dtype!r}")
        clips = dev_clips if dev_clips else noise_clips(sample_rate_hz=model.cfg.sample_rate_hz)
        report = check_parity(model, tmp / "model.onnx", clips, atol=atol)
        logger.info("parity: %d clips, max |diff| %.2e (atol %.0e), %d/%d transcripts equal",
                    report.clips, report.max_abs_diff, atol, report.transcripts_equal, report.clips)
        if not report.passed:
            raise ParityError(f"parity gate failed: max |diff| {report.max_abs_diff:.3e} (atol {atol:.0e}), "
                              f"{len(report.mismatches)} transcript mismatches, e.g. {report.mismatches[:2]}")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        manifest = Manifest(
            model=model_name, task="speech_ctc", config=model.cfg.to_dict(), inputs=INPUTS, outputs=OUTPUTS,
            files=file_digests(tmp), engine="onnxruntime",
            precision="fp16-weights" if weights_dtype == "float16" else "fp32", opset=OPSET,
            source_checkpoint_sha256=source_checkpoint_sha256,
            parity={**report.to_dict(), "dev_data": bool(dev_clips)},
            extras={"frame_s": model.cfg.frame_s, **(extras or {})},
        )
        write_manifest(tmp, manifest)
    return final, manifest
