"""Energy-based endpointing for streaming recognition: where does an utterance end?

Audio is cut into 10 ms frames; a frame is speech when its RMS level is above `threshold_dbfs` (a
full-scale sine is 0 dBFS). After some speech, `silence_ms` of non-speech ends the utterance at that
point. Cheap and model-independent (it needs no acoustic model output, so it works the same for every
model and for random weights), at the price of treating loud noise as speech.

    ep = EnergyEndpointer(EndpointOptions(silence_ms=800), sample_rate_hz=16000)
    ends = ep.push(samples)   # sample positions (from the stream start) where an utterance ended
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.errors import invalid_argument

FRAME_S = 0.01
_SINE_RMS_DB = 3.0103  # 20 log10(sqrt 2): a full-scale sine's RMS is -3 dB, so it reads 0 dBFS


@dataclass(frozen=True)
class EndpointOptions:
    enabled: bool = True
    silence_ms: float = 800.0  # silence after speech that ends an utterance
    threshold_dbfs: float = -40.0  # a 10 ms frame above this RMS level is speech

    def __post_init__(self) -> None:
        if not 50 <= self.silence_ms <= 10_000:
            raise invalid_argument(f"endpointing.silence_ms is {self.silence_ms:g}; allowed: 50..10000")
        if not -100 <= self.threshold_dbfs <= 0:
            raise invalid_argument(f"endpointing.threshold_dbfs is {self.threshold_dbfs:g}; allowed: -100..0")


class EnergyEndpointer:
    """Feed audio in any amounts; get the sample positions where utterances ended."""

    def __init__(self, options: EndpointOptions, sample_rate_hz: int) -> None:
        self.options = options
        self._frame = max(1, round(FRAME_S * sample_rate_hz))
        self._silence_needed = max(1, round(options.silence_ms / 1000 / FRAME_S))
        self._rest = np.zeros(0, np.float32)  # samples short of a whole frame
        self._position = 0  # samples in whole frames so far
        self._speech_seen = False  # since the last end
        self._silence = 0  # frames of non-speech in a row

    def push(self, samples: np.ndarray) -> list[int]:
        if not self.options.enabled:
            return []
        x = np.concatenate([self._rest, samples])
        n = len(x) // self._frame
        self._rest = x[n * self._frame:]
        frames = x[: n * self._frame].reshape(n, self._frame).astype(np.float64)
        level_dbfs = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12) + _SINE_RMS_DB
        ends = []
        for speech in level_dbfs > self.options.threshold_dbfs:
            self._position += self._frame
            if speech:
                self._speech_seen, self._silence = True, 0
            elif self._speech_seen:
                self._silence += 1
                if self._silence >= self._silence_needed:
                    ends.append(self._position)
                    self._speech_seen, self._silence = False, 0
        return ends
