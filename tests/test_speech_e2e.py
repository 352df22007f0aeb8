"""Speech end to end, through the commands a user runs: synthesize a tiny corpus -> 2-process DDP
training -> word LM -> export with the parity gate -> `nui serve` -> `Recognize` and `nui transcribe`.

The tiny model is trained for a few steps only, so its transcripts are not meaningful; what must hold
is that every stage runs, and that the served transcript is exactly what the torch checkpoint decodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from models.ctc_text import greedy_decode
from tests.nui_commands import nui, serving
from training.speech_ctc.manifest import load_audio, read_manifest
from training.speech_ctc.model_io import load_model


@pytest.fixture(scope="module")
def published(tiny_speech_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("e2e")
    corpus = tiny_speech_corpus
    nui("train", "speech", "--nproc", "2", "--recipe", "training/speech_ctc/recipes/tiny.yaml",
        f"data.train_manifest={corpus / 'train.jsonl'}", f"data.dev_manifest={corpus / 'dev.jsonl'}",
        f"run.out_dir={work / 'run'}", "run.epochs=1")
    nui("data", "lm", "--text", str(corpus / "lm_text.txt"), "--out", str(work / "lm"))
    out = nui("export", "speech", "--checkpoint", str(work / "run"), "--repo", str(work / "repo"),
              "--dev-manifest", str(corpus / "dev.jsonl"), "--lm-dir", str(work / "lm")).stdout
    assert "published" in out
    return work / "run", work / "repo"


@pytest.fixture(scope="module")
def server_address(published: tuple[Path, Path]) -> Iterator[str]:
    with serving(published[1]) as address:
        yield address


@pytest.mark.slow
def test_published_engine_passed_parity_on_dev_clips_and_ships_the_lm(published: tuple[Path, Path]) -> None:
    _, repo = published
    manifest = json.loads((repo / "speech_ctc" / "1" / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["dev_data"]
    assert manifest["parity"]["transcripts_equal"] == manifest["parity"]["clips"] > 0
    assert {"model.onnx", "lm.arpa", "unigrams.txt"} <= set(manifest["files"])


@pytest.mark.slow
def test_recognize_over_grpc_matches_the_torch_checkpoint(published: tuple[Path, Path], server_address: str,
                                                          tiny_speech_corpus: Path) -> None:
    from proto import speech_pb2, speech_pb2_grpc

    run, _ = published
    model, _ = load_model(run)
    utts = read_manifest(tiny_speech_corpus / "test.jsonl")
    with grpc.insecure_channel(server_address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        for u in utts:
            audio = load_audio(u.audio_filepath)
            with torch.no_grad():
                lp, n = model(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
            expected = greedy_decode(lp[0, : int(n[0])].numpy())
            config = speech_pb2.RecognitionConfig(enable_word_time_offsets=True,
                                                  decoder=speech_pb2.DECODER_GREEDY)
            resp = stub.Recognize(speech_pb2.RecognizeRequest(config=config, audio=u.audio_filepath.read_bytes()),
                                  timeout=30)
            best = resp.results[0].alternatives[0]
            assert best.transcript == expected
            assert resp.audio_duration_s == pytest.approx(u.duration_s, abs=0.01)
            assert [w.word for w in best.words] == expected.split()
            lm = stub.Recognize(speech_pb2.RecognizeRequest(audio=u.audio_filepath.read_bytes()), timeout=30)
            assert isinstance(lm.results[0].alternatives[0].transcript, str)


@pytest.mark.slow
def test_nui_transcribe_in_process_and_against_the_server_agree(published: tuple[Path, Path],
                                                                server_address: str,
                                                                tiny_speech_corpus: Path) -> None:
    _, repo = published
    clips = [str(u.audio_filepath) for u in read_manifest(tiny_speech_corpus / "test.jsonl")]
    local = nui("transcribe", *clips, "--repo", str(repo), "--no-lm").stdout
    remote = nui("transcribe", *clips, "--server", server_address, "--no-lm").stdout
    assert local == remote
    assert local.count("\n") >= len(clips)


@pytest.mark.slow
def test_nui_eval_reports_greedy_lm_and_pocketsphinx_on_the_same_clips(published: tuple[Path, Path],
                                                                       tiny_speech_corpus: Path,
                                                                       tmp_path: Path) -> None:
    run, _ = published
    out = tmp_path / "eval.json"
    nui("eval", "speech", "--checkpoint", str(run), "--manifest", str(tiny_speech_corpus / "test.jsonl"),
        "--lm-dir", str(run.parent / "lm"), "--tune-manifest", str(tiny_speech_corpus / "dev.jsonl"),
        "--alphas", "0.5", "--betas", "0,1", "--sample", "3", "--out", str(out))
    results = json.loads(out.read_text())
    assert [r["system"] for r in results["rows"]] == ["nui greedy", "nui beam + 3-gram LM", "pocketsphinx 5.1.1"]
    assert results["clips"] == 3 and len(results["tuning"]["grid"]) == 2
    assert all(r["wer"] >= 0.0 and r["x_real_time"] > 0 for r in results["rows"])
    assert sum(results["group_clips"][g] for g in results["group_clips"] if g.startswith("voice:")) == 3
