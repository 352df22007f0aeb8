"""`nui transcribe`: in-process and through a server give the same text; errors are one clear line."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from server.repository import default_repo
from server.transcribe import main
from tests.server.conftest import StartServer
from tests.server.helpers import encode, make_clip


@pytest.fixture
def wavs(tmp_path: Path) -> list[Path]:
    paths = []
    for i, (seconds, rate_hz) in enumerate([(0.7, 16000), (0.9, 22050)]):
        path = tmp_path / f"clip{i}.wav"
        path.write_bytes(encode(make_clip(seconds, seed=i, sample_rate_hz=rate_hz), rate_hz))
        paths.append(path)
    return paths


def test_in_process_prints_transcripts_and_words(tiny_repo: Path, wavs: list[Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(wavs[0]), "--repo", str(tiny_repo)]) == 0
    single = capsys.readouterr().out.splitlines()
    assert len(single) == 1
    assert main([*map(str, wavs), "--repo", str(tiny_repo), "--words", "--no-lm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{wavs[0]}: {single[0]}"
    heads = [line for line in lines if not line.startswith("  ")]
    assert [h.split(": ")[0] for h in heads] == [str(p) for p in wavs]
    words = [line.split() for line in lines if line.startswith("  ")]
    assert all(len(w) == 3 and float(w[0]) <= float(w[1]) for w in words)


async def test_server_and_in_process_agree(start: StartServer, tiny_repo: Path, wavs: list[Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    server = await start()
    args = [*map(str, wavs), "--words"]
    # the client is synchronous: run it off the event loop that serves it
    assert await asyncio.to_thread(main, [*args, "--server", server.address]) == 0
    remote = capsys.readouterr().out
    assert main([*args, "--repo", str(tiny_repo)]) == 0
    assert capsys.readouterr().out == remote


def test_missing_file_and_bad_audio(tiny_repo: Path, wavs: list[Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"junk" * 100)
    assert main([str(tmp_path / "nope.wav"), str(junk), str(wavs[0]), "--repo", str(tiny_repo)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"nui transcribe: error: {tmp_path / 'nope.wav'}: cannot read it (No such file or directory)",
        f"nui transcribe: error: {junk}: audio could not be decoded with encoding ENCODING_UNSPECIFIED "
        "(auto-detected WAV/FLAC/OGG): Format not recognised.; for headerless 16-bit PCM set "
        "config.encoding=LINEAR_PCM and config.sample_rate_hertz"]
    assert captured.out.startswith(f"{wavs[0]}: ")  # the good file is still transcribed


def test_unreachable_server(wavs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main([str(wavs[0]), "--server", f"127.0.0.1:{port}", "--timeout-s", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nui transcribe: error: {wavs[0]}: the speech server at 127.0.0.1:{port} is unavailable: ")
    assert "Traceback" not in err


async def test_server_side_errors_are_reported(start: StartServer, wavs: list[Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    server = await start()
    assert await asyncio.to_thread(main, [str(wavs[0]), "--server", server.address, "--model", "x"]) == 1
    err = capsys.readouterr().err
    assert f"server {server.address} answered NOT_FOUND: config.model 'x' is not loaded" in err


def test_missing_repository_and_model(tiny_repo: Path, wavs: list[Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(wavs[0]), "--repo", str(tmp_path / "none")]) == 1
    assert "model repository" in capsys.readouterr().err
    assert main([str(wavs[0]), "--repo", str(tiny_repo), "--model", "klingon"]) == 1
    assert "config.model 'klingon' is not loaded" in capsys.readouterr().err
    assert main([str(wavs[0]), "--repo", str(tiny_repo), "--lm"]) == 1
    assert "ships none" in capsys.readouterr().err


def test_default_repo_is_the_bundled_folder() -> None:
    assert default_repo() == Path(__file__).resolve().parents[2] / "model_repository"
