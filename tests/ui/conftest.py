"""Fixtures for the UI tests: a real `nui serve` child process over a repository with every task, and the
Gradio app launched against it (127.0.0.1, free ports).

The repository holds the bundled models (model_repository/, or $NUI_UI_TEST_REPO) and, for each task
they lack, a tiny one (the tiny diagnosis model, tests/diagnosis_tiny.py), so every page talks to a real service.
The captioner is always the tiny one that has learnt two captions (tests/captioner_tiny.py): the tests
check those exact captions.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "proto" / "caption_pb2_grpc.py").exists():
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)

pytest.importorskip("gradio")

from ui.client import NuiClient  # noqa: E402
from ui.up import free_port  # noqa: E402

# The models the UI tests start from; NUI_UI_TEST_REPO picks another folder (e.g. one with a locally
# exported diagnosis model, to take the docs' screenshots with real diseases).
BUNDLED = Path(os.environ.get("NUI_UI_TEST_REPO") or ROOT / "model_repository")


@pytest.fixture(scope="session")
def ui_repo(tmp_path_factory: pytest.TempPathFactory, tiny_captioner: tuple[Any, Any]) -> Path:
    torch = pytest.importorskip("torch")
    repo = tmp_path_factory.mktemp("ui_repository")
    bundled = {m.name for m in BUNDLED.iterdir() if m.is_dir()}
    for name in bundled - {"captioner"}:  # the tests read the tiny captioner's two known captions
        # The free-text model belongs to the bundled diagnosis model's knowledge base, not the tiny one.
        if name != "symptom_text" or "diagnosis" in bundled:
            shutil.copytree(BUNDLED / name, repo / name)
    if not (repo / "diagnosis").exists():
        from engines.export_diagnosis import export_diagnosis
        from models.diagnosis import build, get_preset
        from tests.diagnosis_tiny import tiny_tables

        torch.manual_seed(0)
        diagnosis = build(get_preset("tiny"))
        with torch.no_grad():
            assert diagnosis.wide is not None
            diagnosis.wide.weight.normal_(0, 1.0)
        export_diagnosis(diagnosis.eval(), tiny_tables(), repo, "diagnosis", 1, weights_dtype="float32")
    from engines.export_captioner import export_captioner

    captioner, tokenizer = tiny_captioner
    export_captioner(captioner, tokenizer.to_str(), repo, "captioner", 1)
    return repo


class ServerProcess:
    def __init__(self, repo: Path) -> None:
        self.metrics_port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.main", "--repo", str(repo), "--port", "0", "--intra-op-threads", "1",
             "--metrics-port", str(self.metrics_port), "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        self.address = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = re.match(r"listening on (\S+)", line)
            if match:
                self.address = match.group(1)
                break
        if not self.address:
            self.stop()
            raise RuntimeError("nui serve did not start")

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="session")
def server(ui_repo: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(ui_repo)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[NuiClient]:
    c = NuiClient(server.address)
    c.wait_ready(60)
    yield c
    c.close()


@pytest.fixture(scope="session")
def app_url(client: NuiClient, server: ServerProcess) -> Iterator[str]:
    """The app launched in this process against the server (like `nui up` does)."""
    from ui.app import launch
    from ui.context import AppContext
    from ui.tts import Speaker

    ctx = AppContext.connect(client, Speaker.find(), server.metrics_url)
    app, url = launch(ctx, "127.0.0.1", free_port())
    yield url
    app.close()


def say(text: str, out: Path, voice: str = "en-us+m3") -> Path:
    """A WAV of `text` from espeak-ng (what the bundled speech model was trained on: synthesized voices)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (bash scripts/setup.sh installs it)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(out), text], check=True)
    return out


@pytest.fixture(scope="session")
def streaming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the bundled offline model and a tiny streaming model (random weights, 120 ms chunks):
    the streaming paths run end to end, though its transcripts are noise."""
    torch = pytest.importorskip("torch")
    from engines.export_speech_streaming import export_speech_ctc_streaming
    from models.speech_ctc import build, get_preset

    repo = tmp_path_factory.mktemp("ui_streaming_repository")
    shutil.copytree(BUNDLED / "speech_ctc", repo / "speech_ctc")
    torch.manual_seed(0)
    export_speech_ctc_streaming(build(get_preset("tiny-streaming")).eval(), repo, version=1, chunk_ms=120)
    s = ServerProcess(repo)
    yield s
    s.stop()
