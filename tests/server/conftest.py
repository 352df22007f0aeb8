"""Fixtures for server tests: a tiny speech_ctc model repository (random weights), clips, servers.

The repository is exported once per session with the real exporter (`engines.export_speech`); tests
need batch-invariant log-probs of the right shapes, not a model that recognizes anything.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The stubs are git-ignored build outputs; generate them when this checkout has not yet.
if not (ROOT / "proto" / "speech_pb2_grpc.py").exists():
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)

from engines.manifest import read_manifest, sha256_file, write_manifest  # noqa: E402
from server.app import ServerConfig, SpeechServer, start_server  # noqa: E402
from server.repository import load_speech_models  # noqa: E402
from server.speech_ctc import SpeechCTCModel  # noqa: E402
from tests.server.helpers import encode, make_clip  # noqa: E402

Models = dict[str, dict[int, SpeechCTCModel]]
StartServer = Callable[..., Awaitable[SpeechServer]]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from engines.export_speech import export_speech_ctc
    from models.speech_ctc import build, get_preset

    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    repo = tmp_path_factory.mktemp("model_repository")
    export_speech_ctc(model, repo, "speech_ctc", 1)
    return repo


@pytest.fixture(scope="session")
def lm_repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 3-gram LM and beam options in its manifest's extras, as
    `nui export speech --lm-dir ... --decoder ...` publishes it (files copied and checksummed)."""
    from training.speech_ctc.lm import build as build_lm

    root = tmp_path_factory.mktemp("lm_model")
    (root / "text.txt").write_text("the cat sat on the mat\na dog sat\nthe dog was sad\n", encoding="utf-8")
    build_lm(root / "text.txt", root / "lm", order=3)
    folder = root / "model_repository" / "speech_ctc" / "1"
    shutil.copytree(tiny_repo / "speech_ctc" / "1", folder)
    for name in ("lm.arpa", "unigrams.txt"):
        shutil.copyfile(root / "lm" / name, folder / name)
    manifest = read_manifest(folder)
    lm_files = {n: sha256_file(folder / n) for n in ("lm.arpa", "unigrams.txt")}
    write_manifest(folder, dataclasses.replace(
        manifest, files={**manifest.files, **lm_files},
        extras={**manifest.extras, "lm": {"arpa": "lm.arpa", "unigrams": "unigrams.txt"},
                "decoder": {"beam_width": 8, "alpha": 0.7, "beta": 1.0}}))
    return root / "model_repository"


@pytest.fixture(scope="session")
def streaming_repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline model plus a tiny-streaming engine (random weights, 120 ms chunks) exported as
    `nui export speech` publishes a unidirectional checkpoint: model speech_ctc_streaming, version 1."""
    torch = pytest.importorskip("torch")
    from engines.export_speech_streaming import export_speech_ctc_streaming
    from models.speech_ctc import build, get_preset

    repo = tmp_path_factory.mktemp("streaming_repository")
    shutil.copytree(tiny_repo / "speech_ctc", repo / "speech_ctc")
    torch.manual_seed(0)
    export_speech_ctc_streaming(build(get_preset("tiny-streaming")).eval(), repo, version=1, chunk_ms=120)
    return repo


@pytest.fixture(scope="session")
def clips() -> list[bytes]:
    """Eight 16 kHz mono WAV clips of different lengths (0.4 to 1.45 s)."""
    return [encode(make_clip(0.4 + 0.15 * i, seed=i)) for i in range(8)]


@pytest.fixture
def tiny_models(tiny_repo: Path) -> Models:
    return load_speech_models(tiny_repo, intra_op_threads=1)


@pytest.fixture
async def start(tiny_repo: Path) -> AsyncIterator[StartServer]:
    """`await start(models=None, **ServerConfig overrides)`: a server on 127.0.0.1, port 0 (stopped at
    teardown)."""
    started: list[SpeechServer] = []

    async def _start(models: Models | None = None, **overrides: object) -> SpeechServer:
        settings: dict[str, object] = {"repo": tiny_repo, "port": 0, "max_queue_delay_ms": 20.0,
                                       "intra_op_threads": 1, **overrides}
        server = await start_server(ServerConfig(**settings), models)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield _start
    for server in started:
        await server.stop(0)
