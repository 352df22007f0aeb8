"""Streaming export: chunk-by-chunk log-probs equal the offline forward (torch and ONNX Runtime), for
several chunk sizes, with streams of different lengths and positions in one batch; the gate refuses a
graph that disagrees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines import export_speech_streaming as exs
from engines.engine import OnnxRuntimeEngine
from engines.export_speech import ParityError
from engines.manifest import model_versions
from models.speech_ctc import SpeechCTC, build, get_preset
from models.speech_ctc_streaming import StreamingSpeechCTC, stream_log_probs

ATOL = 1e-4


def _tiny_streaming(seed: int = 0) -> SpeechCTC:
    torch.manual_seed(seed)
    return build(get_preset("tiny-streaming")).eval()


def _offline(model: SpeechCTC, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        lp, n = model(audio[None], torch.tensor([audio.shape[0]]))
    return lp[0, : int(n[0])]


@pytest.mark.parametrize("chunk_frames", [1, 3, 8])
def test_torch_chunks_equal_the_offline_forward(chunk_frames: int) -> None:
    model = _tiny_streaming()
    step = StreamingSpeechCTC(model, chunk_frames)
    gen = torch.Generator().manual_seed(1)
    # a single window, lengths off the chunk grid, an exact multiple of the chunk
    for samples in (400, 2345, 7000, 4 * step.chunk_samples):
        audio = torch.randn(samples, generator=gen) * 0.2
        want = _offline(model, audio)
        with torch.no_grad():
            got = stream_log_probs(step, audio)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_bidirectional_models_are_refused() -> None:
    with pytest.raises(ValueError, match="unidirectional"):
        StreamingSpeechCTC(build(get_preset("tiny")), 4)


def test_export_publishes_a_stateful_engine_that_streams_like_the_offline_model(tmp_path: Path) -> None:
    model = _tiny_streaming()
    path, manifest = exs.export_speech_ctc_streaming(model, tmp_path / "repo", chunk_ms=80)
    assert path == tmp_path / "repo" / "speech_ctc_streaming" / "1"
    assert manifest.task == "speech_ctc_streaming" and manifest.parity["passed"]
    streaming = manifest.extras["streaming"]
    assert streaming["chunk_frames"] == 4 and streaming["chunk_ms"] == 80.0 and streaming["chunk_samples"] == 1280
    names = [s["name"] for s in streaming["state"]]
    assert names == ["audio_tail", "conv0_context", "conv1_context", "rnn_hidden", "lookahead_context",
                     "samples_seen"]
    assert {t.name for t in manifest.outputs} >= {n + "_out" for n in names}
    engine = OnnxRuntimeEngine(path)  # names and dtypes match the manifest

    # Two streams of different lengths, the second joining one chunk later: each one's rows still equal
    # its offline log-probs (the engine holds no cross-stream state).
    rng = np.random.default_rng(2)
    clips = [(rng.standard_normal(5000) * 0.2).astype(np.float32),
             (rng.standard_normal(3100) * 0.2).astype(np.float32)]
    k, n = streaming["chunk_samples"], streaming["chunk_frames"]
    specs = {s["name"]: s for s in streaming["state"]}
    states = [{name: np.zeros(s["shape"], s["dtype"]) for name, s in specs.items()} for _ in clips]
    rows: list[list[np.ndarray]] = [[], []]
    offsets, done = [0, -k], [False, False]
    while not all(done):
        active = [i for i in range(2) if offsets[i] >= 0 and not done[i]]
        chunk = np.zeros((len(active), k), np.float32)
        known = np.zeros(len(active), np.int64)
        for j, i in enumerate(active):
            piece = clips[i][offsets[i]: offsets[i] + k]
            chunk[j, : len(piece)] = piece
            known[j] = len(clips[i]) if offsets[i] + k >= len(clips[i]) else -1
        feed: dict[str, np.ndarray] = {"audio_chunk": chunk, "stream_samples": known}
        feed |= {name: np.stack([states[i][name] for i in active]) for name in specs}
        out = engine.run(feed)
        for j, i in enumerate(active):
            states[i] = {name: out[name + "_out"][j] for name in specs}
            first, end = int(out["frame_index"][j]), int(out["stream_frames"][j])
            lo, hi = max(0, -first), n if end < 0 else min(n, end - first)
            if hi > lo:
                rows[i].append(out["log_probs"][j, lo:hi])
            done[i] = end >= 0 and first + n >= end
        offsets = [o + k for o in offsets]
    for i, clip in enumerate(clips):
        want = _offline(model, torch.from_numpy(clip)).numpy()
        got = np.concatenate(rows[i])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_gate_refuses_a_graph_that_disagrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = exs.export_onnx

    def export_another_model(step: StreamingSpeechCTC, path: Path, opset: int = exs.OPSET) -> None:
        real_export(StreamingSpeechCTC(_tiny_streaming(99), step.chunk_frames), path, opset)

    monkeypatch.setattr(exs, "export_onnx", export_another_model)
    with pytest.raises(ParityError, match="streaming parity gate failed"):
        exs.export_speech_ctc_streaming(_tiny_streaming(), tmp_path / "repo")
    assert model_versions(tmp_path / "repo", "speech_ctc_streaming") == []


def test_stream_onnx_handles_clips_shorter_than_a_chunk(tmp_path: Path) -> None:
    model = _tiny_streaming()
    path, manifest = exs.export_speech_ctc_streaming(model, tmp_path / "repo", chunk_ms=200)
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    clip = (np.random.default_rng(3).standard_normal(900) * 0.2).astype(np.float32)
    s = manifest.extras["streaming"]
    [got] = exs.stream_onnx(session, manifest.inputs, s["chunk_samples"], s["chunk_frames"], [clip])
    np.testing.assert_allclose(got, _offline(model, torch.from_numpy(clip)).numpy(), atol=ATOL, rtol=0)


def test_nui_export_speech_picks_the_streaming_engine_for_a_unidirectional_checkpoint(tmp_path: Path) -> None:
    from nui.export import main
    from training.common.checkpoint import save_weights
    from training.speech_ctc.model_io import MODEL_NAME

    model = _tiny_streaming()
    weights = tmp_path / "model.safetensors"
    save_weights(weights, model, MODEL_NAME, model.cfg.to_dict())
    assert main(["--checkpoint", str(weights), "--repo", str(tmp_path / "repo"), "--chunk-ms", "60"]) == 0
    assert model_versions(tmp_path / "repo", "speech_ctc_streaming") == [1]
    assert OnnxRuntimeEngine(tmp_path / "repo" / "speech_ctc_streaming" / "1").manifest.extras["streaming"][
        "chunk_frames"] == 3
    assert main(["--checkpoint", str(weights), "--repo", str(tmp_path / "repo"), "--no-streaming"]) == 0
    assert model_versions(tmp_path / "repo", "speech_ctc") == [1]  # the same model as an offline engine
