"""Parity gates of an FP16 engine against the FP32 engine it was converted from, per task, with task metrics.

Used by engines/fp16.py `publish_fp16` (nui export ... --precision fp16). Each gate runs both version
folders on ONNX Runtime's CPU provider on the same inputs and returns a JSON-able report with `passed`:

- speech_ctc: max |diff| of the output *probabilities* on valid frames (log-probs of impossible characters
  differ by whole units in FP16 and do not matter), greedy transcripts equal, and greedy WER of both
  engines against the reference texts (when given) with a bound on the WER increase;
- diagnosis: max |diff| of the disease probabilities and the share of identical top-5 lists (near ties
  that rounding swapped count as identical; exact and top-1 shares are reported too);
- captioner: relative error of the encoder outputs (their scale varies by output) and the share of
  identical greedy captions.

Tolerances are per model (`TOLERANCES`), set from the measured figures with head-room; the measured
figures themselves go into the FP16 manifest's `parity["fp16_vs_fp32"]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import onnxruntime as ort

from engines.fp16 import ExampleFeeds, Gate
from engines.manifest import read_manifest
from models.caption_beam import StepFn, greedy_search
from models.caption_text import BOS, EOS, PAD, UNK
from models.ctc_text import greedy_decode, normalize_text
from models.speech_batch import pad_batch

# max_prob_diff: on probabilities; max_wer_increase: absolute WER (0.01 = one point); min_*_agreement: share.
TOLERANCES: dict[str, dict[str, float]] = {
    # measured on the bundled model, 100 dev clips: 0.0034, +0.0 WER, 100% equal transcripts
    "speech_ctc": {"max_prob_diff": 0.05, "max_wer_increase": 0.005, "min_transcript_agreement": 0.95},
    # near_tie: top-5 lists that differ only among diseases whose FP32 probabilities are this close count as
    # agreeing (rounding may swap them); measured on 2000 dev patients: max diff 4.6e-4, 99.25 % exact lists
    "diagnosis": {"max_prob_diff": 5e-3, "near_tie": 1e-3, "min_top5_agreement": 0.99},
    # features on the relative scale: ||fp16 - fp32|| / ||fp32|| over each encoder output
    "captioner": {"max_feature_rel_err": 0.01, "min_caption_agreement": 0.9},
}


# one run of a graph: feeds by input name -> outputs by output name (`Engine.run`, or an ONNX session's)
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # gates run next to training jobs on shared CPUs
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _onnx(path: Path) -> Run:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds), strict=True))


def speech_gate(fp32_dir: Path, fp16_dir: Path, clips: Sequence[np.ndarray], texts: Sequence[str] | None = None,
                tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Both speech engines on `clips` (float32 mono at the model's rate), on ONNX Runtime's CPU provider."""
    return compare_speech(_onnx(fp32_dir / "model.onnx"), _onnx(fp16_dir / "model.onnx"), clips, texts, tolerances)


def compare_speech(r32: Run, r16: Run, clips: Sequence[np.ndarray], texts: Sequence[str] | None = None,
                   tolerances: dict[str, float] | None = None, max_batch: int = 8) -> dict[str, Any]:
    """The speech gate's figures for any two runs of the model (FP32 reference, FP16 candidate), batched
    by length."""
    tol = {**TOLERANCES["speech_ctc"], **(tolerances or {})}
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    hyp32, hyp16 = [""] * len(clips), [""] * len(clips)
    max_diff = 0.0
    for k in range(0, len(order), max_batch):
        idx = order[k:k + max_batch]
        audio, lengths = pad_batch([clips[i] for i in idx])
        feeds = {"audio": audio, "audio_lengths": lengths}
        o32, o16 = r32(feeds), r16(feeds)
        (lp32, n32), (lp16, n16) = (o32["log_probs"], o32["out_lengths"]), (o16["log_probs"], o16["out_lengths"])
        if not np.array_equal(n32, n16):
            raise ValueError(f"output lengths differ: fp32 {n32.tolist()} vs fp16 {n16.tolist()}")
        for row, (i, n) in enumerate(zip(idx, n32.tolist(), strict=True)):
            a, b = lp32[row, :n], lp16[row, :n]
            if n:
                max_diff = max(max_diff, float(np.abs(np.exp(a) - np.exp(b)).max()))
            hyp32[i], hyp16[i] = greedy_decode(a), greedy_decode(b)
    agree = sum(a == b for a, b in zip(hyp32, hyp16, strict=True)) / max(1, len(clips))
    report: dict[str, Any] = {"clips": len(clips), "max_prob_diff": max_diff, "transcript_agreement": agree,
                              "tolerances": tol}
    passed = max_diff <= tol["max_prob_diff"] and agree >= tol["min_transcript_agreement"]
    if texts is not None:
        refs = [normalize_text(t) for t in texts]
        keep = [i for i, r in enumerate(refs) if r]  # jiwer rejects empty references
        wer32 = float(jiwer.wer([refs[i] for i in keep], [hyp32[i] for i in keep]))
        wer16 = float(jiwer.wer([refs[i] for i in keep], [hyp16[i] for i in keep]))
        report.update(greedy_wer_fp32=wer32, greedy_wer_fp16=wer16, greedy_wer_delta=wer16 - wer32)
        passed = passed and wer16 - wer32 <= tol["max_wer_increase"]
    report["passed"] = bool(passed)
    return report


def diagnosis_gate(fp32_dir: Path, fp16_dir: Path, evidence: np.ndarray, age_years: np.ndarray, sex: np.ndarray,
                   tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Both diagnosis engines on dev rows, on ONNX Runtime's CPU provider: probabilities and top-5 lists."""
    return compare_diagnosis(_onnx(fp32_dir / "model.onnx"), _onnx(fp16_dir / "model.onnx"), evidence, age_years,
                             sex, tolerances)


def compare_diagnosis(r32: Run, r16: Run, evidence: np.ndarray, age_years: np.ndarray, sex: np.ndarray,
                      tolerances: dict[str, float] | None = None, batch_size: int = 256) -> dict[str, Any]:
    """The diagnosis gate's figures for any two runs of the model (FP32 reference, FP16 candidate)."""
    tol = {**TOLERANCES["diagnosis"], **(tolerances or {})}
    max_diff, exact, same, top1, rows = 0.0, 0, 0, 0, len(evidence)
    for start in range(0, rows, batch_size):
        feeds = {"evidence": evidence[start:start + batch_size], "age_years": age_years[start:start + batch_size],
                 "sex": sex[start:start + batch_size]}
        p32, p16 = r32(feeds)["probs"], r16(feeds)["probs"]
        max_diff = max(max_diff, float(np.abs(p32 - p16).max()))
        k = min(5, p32.shape[1])
        top32 = np.argsort(-p32, axis=1, kind="stable")[:, :k]
        top16 = np.argsort(-p16, axis=1, kind="stable")[:, :k]
        equal = (top32 == top16).all(axis=1)
        exact += int(equal.sum())
        top1 += int((top32[:, 0] == top16[:, 0]).sum())
        rows_idx = np.arange(len(p32))[:, None]
        # where the lists differ, FP32 scores both candidates within near_tie: a swap of a near tie
        ties = np.abs(p32[rows_idx, top32] - p32[rows_idx, top16]).max(axis=1) <= tol["near_tie"]
        same += int((equal | ties).sum())
    agree = same / max(1, rows)
    return {"rows": rows, "max_prob_diff": max_diff, "top1_agreement": top1 / max(1, rows),
            "top5_exact": exact / max(1, rows), "top5_agreement": agree, "tolerances": tol,
            "passed": bool(max_diff <= tol["max_prob_diff"] and agree >= tol["min_top5_agreement"])}


def decoder_step(run: Run) -> StepFn:
    """The captioner's decoder-step graph as a `greedy_search` / `beam_search` step function."""
    def step(tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        out = run({"tokens": tokens, **state})
        return out["log_probs"], {**state, "state": out["state_out"]}
    return step


def captioner_gate(fp32_dir: Path, fp16_dir: Path, images: np.ndarray,
                   tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Both captioners (encoder + greedy decoding with the step graph) on (N, 3, H, W) images in [0, 1], on
    ONNX Runtime's CPU provider."""
    manifest = read_manifest(fp32_dir, verify=False)
    graphs = manifest.extras["graphs"]
    enc_file, dec_file = graphs["encoder"]["file"], graphs["decoder_step"]["file"]
    runs = [(_onnx(folder / enc_file), _onnx(folder / dec_file)) for folder in (fp32_dir, fp16_dir)]
    return compare_captioner(runs[0], runs[1], images, int(manifest.config["max_len"]), tolerances)


def compare_captioner(r32: tuple[Run, Run], r16: tuple[Run, Run], images: np.ndarray, max_len: int,
                      tolerances: dict[str, float] | None = None, batch_size: int = 8) -> dict[str, Any]:
    """The captioner gate's figures for any two (encoder, decoder step) runs (FP32 reference, FP16 candidate);
    `max_len` is the manifest config's, BOS included."""
    tol = {**TOLERANCES["captioner"], **(tolerances or {})}
    max_length = max_len - 1  # BOS is given, not generated
    max_diff, rel_err = 0.0, 0.0
    caps: dict[str, list[list[int]]] = {"fp32": [], "fp16": []}
    outs: dict[str, list[np.ndarray]] = {}
    for name, (enc, dec) in (("fp32", r32), ("fp16", r16)):
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
            out = enc({"images": batch})
            outs.setdefault(name, []).extend(out.values())  # the domain check's outputs too, where present
            state = {k: out[k] for k in ("memory", "keys", "state")}
            hyps = greedy_search(decoder_step(dec), state, len(batch), BOS, EOS, max_length, (PAD, BOS, UNK))
            caps[name] += [h.tokens for h in hyps]
    for a, b in zip(outs["fp32"], outs["fp16"], strict=True):
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        rel_err = max(rel_err, float(np.linalg.norm(a - b) / max(float(np.linalg.norm(a)), 1e-12)))
    same = sum(a == b for a, b in zip(caps["fp32"], caps["fp16"], strict=True))
    agree = same / max(1, len(images))
    return {"images": len(images), "max_feature_diff": max_diff, "max_feature_rel_err": rel_err,
            "caption_agreement": agree, "tolerances": tol,
            "passed": bool(rel_err <= tol["max_feature_rel_err"] and agree >= tol["min_caption_agreement"])}


# (gate, example feeds) per task, for engines/fp16.py `publish_fp16`.
Check = tuple[Gate, ExampleFeeds]


def speech_check(clips: Sequence[np.ndarray], texts: Sequence[str] | None = None,
                 tolerances: dict[str, float] | None = None) -> Check:
    def feeds(src_dir: Path, graph: str) -> dict[str, np.ndarray]:
        audio, lengths = pad_batch(clips[:1])
        return {"audio": audio, "audio_lengths": lengths}
    return (lambda a, b: speech_gate(a, b, clips, texts, tolerances)), feeds


def diagnosis_check(evidence: np.ndarray, age_years: np.ndarray, sex: np.ndarray,
                    tolerances: dict[str, float] | None = None) -> Check:
    def feeds(src_dir: Path, graph: str) -> dict[str, np.ndarray]:
        return {"evidence": evidence[:4], "age_years": age_years[:4], "sex": sex[:4]}
    return (lambda a, b: diagnosis_gate(a, b, evidence, age_years, sex, tolerances)), feeds


def captioner_check(images: np.ndarray, tolerances: dict[str, float] | None = None) -> Check:
    def feeds(src_dir: Path, graph: str) -> dict[str, np.ndarray]:
        graphs = read_manifest(src_dir, verify=False).extras["graphs"]
        batch = np.ascontiguousarray(images[:2], dtype=np.float32)
        if graph == graphs["encoder"]["file"]:
            return {"images": batch}
        memory, keys, state = _session(src_dir / graphs["encoder"]["file"]).run(  # not the domain check's outputs
            ["memory", "keys", "state"], {"images": batch})
        return {"tokens": np.full(len(batch), BOS, dtype=np.int64), "state": state, "memory": memory, "keys": keys}
    return (lambda a, b: captioner_gate(a, b, images, tolerances)), feeds
