"""Server test helpers: seeded clips and their bytes, an engine wrapper that fails or stalls, polling."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable

import numpy as np
import soundfile as sf

from engines.engine import Engine
from engines.manifest import Manifest
from server.speech_ctc import SpeechCTCModel

SAMPLE_RATE_HZ = 16000


def make_clip(seconds: float, seed: int, sample_rate_hz: int = SAMPLE_RATE_HZ,
              channels: int = 1) -> np.ndarray:
    """Seeded speech-like noise (an amplitude-modulated tone plus noise): (S,) or (S, channels) float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    x = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = (x + 0.05 * rng.standard_normal(n)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encode(samples: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ, fmt: str = "WAV",
           subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate_hz, format=fmt, subtype=subtype)
    return buf.getvalue()


def pcm16(samples: np.ndarray) -> bytes:
    """Headerless little-endian int16 bytes of a mono float clip."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` on the event loop (instead of guessing a sleep on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


class WrappedEngine:
    """Delegates to a real engine; fails whole batches holding a clip of `poison_samples` samples and
    sleeps `delay_s` per run."""

    def __init__(self, inner: Engine, poison_samples: int = -1, delay_s: float = 0.0) -> None:
        self.inner, self.poison_samples, self.delay_s = inner, poison_samples, delay_s

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def manifest(self) -> Manifest:
        return self.inner.manifest

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        if self.poison_samples in inputs["audio_lengths"].tolist():
            raise RuntimeError("engine failure (test)")
        return self.inner.run(inputs)


def wrap_models(models: dict[str, dict[int, SpeechCTCModel]], poison_samples: int = -1,
                delay_s: float = 0.0) -> dict[str, dict[int, SpeechCTCModel]]:
    """Version 1 of speech_ctc with its engine in a WrappedEngine."""
    engine = WrappedEngine(models["speech_ctc"][1].engine, poison_samples, delay_s)
    return {"speech_ctc": {1: SpeechCTCModel(engine)}}
