"""Audio checks the UI makes before calling the server: empty, silent, too long, too large, unreadable.

    clip = prepare_audio((sample_rate_hz, samples))    # Gradio's numpy microphone value
    clip = prepare_audio("recording.wav")                # an uploaded file
    client.recognize(clip.wav)

Each problem raises `AudioProblem` with a sentence fit to show a person; a good clip comes back as mono
16-bit WAV bytes (the server resamples to the model's rate). Silence is judged by the loudest 20 ms
frame, so a quiet speaker is not mistaken for silence but a muted microphone is.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_DURATION_S = 60.0  # the server's default limit
MIN_DURATION_S = 0.2
SILENCE_DBFS = -50.0  # loudest 20 ms frame quieter than this: nothing was said


class AudioProblem(ValueError):
    """The audio cannot usefully go to the server; the message says why in plain words."""


@dataclass(frozen=True)
class Clip:
    wav: bytes  # mono PCM16 WAV
    sample_rate_hz: int
    duration_s: float
    peak_dbfs: float


def as_float_mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):  # before the downmix, which would turn it into floats
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    if x.ndim == 2:  # (T, C) as Gradio and soundfile give it
        x = x.mean(axis=1) if x.shape[1] <= 8 else x.mean(axis=0)
    return x.astype(np.float32)


def loudest_frame_dbfs(x: np.ndarray, sample_rate_hz: int, frame_s: float = 0.02) -> float:
    n = max(1, int(sample_rate_hz * frame_s))
    frames = x[: len(x) // n * n].reshape(-1, n) if len(x) >= n else x.reshape(1, -1)
    rms = float(np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)).max()) if frames.size else 0.0
    return 20 * np.log10(max(rms, 1e-10))


def prepare_audio(value: tuple[int, np.ndarray] | str | Path | None, max_duration_s: float = MAX_DURATION_S) -> Clip:
    """Check one recording or uploaded file and encode it for `Recognize`; AudioProblem when unusable."""
    if value is None:
        raise AudioProblem("No audio: record something with the microphone or upload a file first.")
    if isinstance(value, str | Path):
        path = Path(value)
        size = path.stat().st_size
        if size == 0:
            raise AudioProblem(f"The file {path.name} is empty.")
        if size > MAX_FILE_BYTES:
            raise AudioProblem(f"The file {path.name} is {size / 2**20:.1f} MB; the limit is "
                               f"{MAX_FILE_BYTES / 2**20:.0f} MB.")
        try:
            samples, rate = sf.read(path, always_2d=False)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioProblem(f"Cannot read {path.name} as audio (WAV, FLAC or OGG expected).") from e
    else:
        rate, samples = value
    x = as_float_mono(samples)
    if x.size == 0:
        raise AudioProblem("The recording is empty.")
    duration_s = len(x) / rate
    if duration_s < MIN_DURATION_S:
        raise AudioProblem(f"The recording is only {duration_s:.2f} s long; say a few words.")
    if duration_s > max_duration_s:
        raise AudioProblem(f"The recording is {duration_s:.0f} s long; the limit is {max_duration_s:.0f} s.")
    peak = loudest_frame_dbfs(x, rate)
    if peak < SILENCE_DBFS:
        raise AudioProblem("Only silence was recorded: check that the right microphone is selected and unmuted.")
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), int(rate), format="WAV", subtype="PCM_16")
    return Clip(buf.getvalue(), int(rate), duration_s, peak)
