"""One live microphone session: audio chunks in (from the page or the terminal), transcripts out.

    session = LiveSession(client, sample_rate_hz=48000, streaming=True)
    session.feed(chunk_float32)          # as the microphone delivers it
    session.interim                      # what has been heard so far (finals + the current interim)
    text = session.finish()              # the final transcript once the person stops

With `streaming` the audio goes to StreamingRecognize through a background thread as it arrives, so the
interim transcript grows while the person talks and the final one is ready moments after they stop.
Without it (the server has no streaming model) the chunks are kept and the whole recording goes to
Recognize at `finish()`, after the checks of ui/audio.py (silence, length). A stream has no length limit
here (the server enforces its own) and keeps no audio, only its loudest level, to explain silence.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from ui.audio import SILENCE_DBFS, AudioProblem, as_float_mono, loudest_frame_dbfs, prepare_audio
from ui.client import NuiClient, NuiError

_END = b""


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(as_float_mono(samples), -1.0, 1.0) * 32767).astype("<i2").tobytes()


class LiveSession:
    def __init__(self, client: NuiClient, sample_rate_hz: int, streaming: bool) -> None:
        self.client = client
        self.sample_rate_hz = sample_rate_hz
        self.streaming = streaming
        self.chunks: list[np.ndarray] = []  # the recording, kept only without streaming
        self.samples = 0
        self.loudest_dbfs = -200.0
        self.finals: list[str] = []
        self.current = ""
        self.error: NuiError | None = None
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._thread: threading.Thread | None = None
        if streaming:
            self._thread = threading.Thread(target=self._run, daemon=True, name="nui-live")
            self._thread.start()

    def _pcm(self) -> Iterator[bytes]:
        while (chunk := self._queue.get()) is not _END:
            yield chunk

    def _run(self) -> None:
        try:
            for t in self.client.streaming_recognize(self._pcm(), self.sample_rate_hz):
                if t.is_final:
                    if t.text:
                        self.finals.append(t.text)
                    self.current = ""
                else:
                    self.current = t.text
        except NuiError as e:
            self.error = e

    def feed(self, samples: np.ndarray) -> None:
        x = np.asarray(samples)
        self.samples += len(x)
        if not self.streaming:
            self.chunks.append(x)
            return
        # At most 5 s per request (the server's limit): the page sends ~0.5 s, the terminal ~0.1 s.
        pcm = to_pcm16(x)
        self.loudest_dbfs = max(self.loudest_dbfs, loudest_frame_dbfs(
            np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768, self.sample_rate_hz))
        step = 2 * self.sample_rate_hz * 4
        for i in range(0, len(pcm), step):
            self._queue.put(pcm[i: i + step])

    @property
    def interim(self) -> str:
        return " ".join([*self.finals, self.current]).strip()

    def finish(self, timeout_s: float = 30.0) -> str:
        """The final transcript. Without streaming the recording is checked (AudioProblem: silence, too
        short or long) and sent to Recognize; with it the stream is closed and its finals joined
        (AudioProblem when nothing was heard in silence). NuiError when the server refused."""
        if not self.streaming:
            recording = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)
            return self.client.recognize(prepare_audio((self.sample_rate_hz, recording)).wav).text
        self._queue.put(_END)
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise NuiError("DEADLINE_EXCEEDED", f"live speech recognition: no final result after {timeout_s:g} s")
        text = " ".join(self.finals).strip()
        if not text and self.loudest_dbfs < SILENCE_DBFS:
            raise AudioProblem("Only silence was recorded: check that the right microphone is selected and unmuted.")
        return text

    def cancel(self) -> None:
        if self.streaming:
            self._queue.put(_END)
