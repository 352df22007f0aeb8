"""The live paths against a server with a streaming model: LiveSession (the page's microphone), the app's
/live_chunk + /live_stop endpoints, and `nui listen` through the ALSA test microphone. The tiny streaming
model has random weights, so these check the protocol (interim and final results arrive, the stream
closes, nothing hangs), not the words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tests.ui.conftest import ServerProcess, say
from tests.ui.test_listen import alsa_home, listen  # noqa: F401  (module fixture)
from ui.audio import SILENCE_DBFS
from ui.client import NuiClient
from ui.live import LiveSession


def test_live_session_streams_and_finishes(streaming_server: ServerProcess, tmp_path: Path) -> None:
    audio, rate = sf.read(say("i have a fever and a cough", tmp_path / "s.wav"), dtype="int16")
    with NuiClient(streaming_server.address) as client:
        assert client.has_streaming()
        session = LiveSession(client, rate, streaming=True)
        step = rate // 2  # the page's 0.5 s chunks
        for i in range(0, len(audio), step):
            session.feed(audio[i: i + step])
        text = session.finish(timeout_s=60)
        assert session.error is None and isinstance(text, str) and session.samples == len(audio)
        assert session.loudest_dbfs > -30
        # Silence is measured while streaming (no audio is kept), to explain an empty transcript; the random
        # model still "hears" something in it, so only the measurement is checked here.
        silent = LiveSession(client, rate, streaming=True)
        silent.feed(np.zeros(rate, dtype=np.int16))
        assert isinstance(silent.finish(timeout_s=60), str) and silent.loudest_dbfs < SILENCE_DBFS


def test_listen_streams_the_alsa_microphone(streaming_server: ServerProcess, alsa_home: Path) -> None:  # noqa: F811
    done = listen(alsa_home, "--server", streaming_server.address, "--device", "nui_wav_mic", "--sample-rate",
                  "16000", "--duration-s", "4")
    assert done.returncode == 0, done.stderr
    assert "listening (streaming)" in done.stderr and "Traceback" not in done.stderr


def test_page_live_handlers(streaming_server: ServerProcess, tmp_path: Path) -> None:
    """The assistant page's streaming handlers, called as Gradio calls them (gradio_client 2.7 cannot drive
    a streaming-input event: KeyError 'process_streaming'; the browser test covers the wiring)."""
    from ui.assistant_page import live_chunk, live_stop
    from ui.context import AppContext
    from ui.dialog import DialogState

    audio, rate = sf.read(say("what can you do", tmp_path / "q.wav"), dtype="int16")
    with NuiClient(streaming_server.address) as client:
        ctx = AppContext.connect(client, None)
        assert ctx.streaming and not ctx.diagnosis
        session = None
        for start in range(0, len(audio), rate // 2):  # the page streams 0.5 s chunks
            interim, session = live_chunk(ctx, (rate, audio[start: start + rate // 2]), session)
            assert isinstance(interim, str)
        assert session is not None and session.samples == len(audio)
        heard, chat, _, cleared = live_stop(ctx, session, [], DialogState())
        assert cleared is None and chat[-1]["role"] == "assistant" and chat[-1]["content"]
        heard, chat, _, _ = live_stop(ctx, None, [], DialogState())
        assert heard == "" and chat[-1]["content"] == "No audio arrived from the microphone."
