"""One live microphone session: audio chunks in (from the page or the terminal), transcripts out.

    session = LiveSession(client, sample_rate_hz=48000, streaming=True)
    session.feed(chunk_float32)          # as the microphone delivers it
    session.interim                      # what has been heard so far (finals + the current interim)
    text = session.finish()              # the final transcript once the person stops

With `streaming` the audio goes to StreamingRecognize through a background thread as it arrives, so the
interim transcript grows while the person talks and the final one is ready moments after they stop.
Without it (the server has no streaming model) the chunks are kept and the whole recording goes to
Recognize at `finish()`. Both paths check the recording first (ui/audio.py: silence, length).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from ui.audio import AudioProblem, prepare_audio
from ui.client import NuiClient, NuiError

_END = b""


def to_pcm16(samples: np.ndarray) -> bytes:
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class LiveSession:
    def __init__(self, client: NuiClient, sample_rate_hz: int, streaming: bool) -> None:
        self.client = client
        self.sample_rate_hz = sample_rate_hz
        self.streaming = streaming
        self.chunks: list[np.ndarray] = []
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
        self.chunks.append(x)
        if self.streaming:
            # At most 5 s per request (the server's limit): the page sends ~0.5 s, the terminal ~0.1 s.
            pcm = to_pcm16(x)
            step = 2 * self.sample_rate_hz * 4
            for i in range(0, len(pcm), step):
                self._queue.put(pcm[i: i + step])

    @property
    def interim(self) -> str:
        return " ".join([*self.finals, self.current]).strip()

    def recording(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)

    def finish(self, timeout_s: float = 30.0) -> str:
        """The final transcript; AudioProblem for silence or a too short / long recording, NuiError when
        the server refused."""
        if self.streaming:
            self._queue.put(_END)  # first: the stream must end even when the recording is refused below
        clip = prepare_audio((self.sample_rate_hz, self.recording()))
        if not self.streaming:
            return self.client.recognize(clip.wav).text
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise NuiError("DEADLINE_EXCEEDED", f"live speech recognition: no final result after {timeout_s:g} s")
        return " ".join(self.finals).strip()

    def cancel(self) -> None:
        if self.streaming:
            self._queue.put(_END)


__all__ = ["AudioProblem", "LiveSession", "to_pcm16"]
