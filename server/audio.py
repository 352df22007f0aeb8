"""Request audio → mono float32 waveform at the model's sample rate, validated (no gRPC, no torch).

Accepts a container (WAV/FLAC/OGG, whatever libsndfile reads; auto-detected from the header) or raw
little-endian int16 mono PCM with an explicit rate. Channels are averaged; rates other than the
model's (within `AudioLimits`) are resampled with soxr. Every failure is a `RequestError` naming the
field, the value and the allowed range.

    audio = decode_audio(wav_bytes, AudioEncoding.AUTO, sample_rate_hz=0, limits=AudioLimits())
    samples = resample(audio, 16000)
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from server.errors import invalid_argument, out_of_range

RATE_FIELD = "config.sample_rate_hertz"


class AudioEncoding(enum.Enum):
    AUTO = "auto"  # a container, detected from its header
    LINEAR_PCM = "linear_pcm"  # headerless little-endian int16 mono


@dataclass(frozen=True)
class AudioLimits:
    min_sample_rate_hz: int = 8000
    max_sample_rate_hz: int = 48000
    max_duration_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.min_sample_rate_hz <= self.max_sample_rate_hz:
            raise ValueError(f"need 0 < min_sample_rate_hz <= max_sample_rate_hz, got "
                             f"{self.min_sample_rate_hz}..{self.max_sample_rate_hz}")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive, got {self.max_duration_s}")


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # (S,) float32, mono, at sample_rate_hz
    sample_rate_hz: int
    channels: int  # in the request, before downmixing

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


def decode_audio(data: bytes, encoding: AudioEncoding, sample_rate_hz: int,
                 limits: AudioLimits) -> DecodedAudio:
    """Decode and check request audio; `sample_rate_hz` 0 means "not given"."""
    if not data:
        raise invalid_argument("audio is empty")
    if sample_rate_hz < 0:
        raise invalid_argument(f"{RATE_FIELD} is {sample_rate_hz}; it must be positive "
                               "(or 0 for a container)")
    if encoding is AudioEncoding.LINEAR_PCM:
        return _decode_pcm16(data, sample_rate_hz, limits)
    return _decode_container(data, sample_rate_hz, limits)


def _check_rate(rate_hz: int, what: str, limits: AudioLimits) -> None:
    if not limits.min_sample_rate_hz <= rate_hz <= limits.max_sample_rate_hz:
        raise invalid_argument(f"{what} is {rate_hz} Hz; allowed: {limits.min_sample_rate_hz}.."
                               f"{limits.max_sample_rate_hz} Hz")


def _check_duration(frames: int, rate_hz: int, limits: AudioLimits) -> None:
    duration_s = frames / rate_hz
    if duration_s > limits.max_duration_s:
        raise out_of_range(f"audio is {duration_s:.2f} s long; the limit is {limits.max_duration_s:g} s")


def _decode_pcm16(data: bytes, sample_rate_hz: int, limits: AudioLimits) -> DecodedAudio:
    if sample_rate_hz == 0:
        raise invalid_argument(f"{RATE_FIELD} is required for LINEAR_PCM audio")
    _check_rate(sample_rate_hz, RATE_FIELD, limits)
    if len(data) % 2:
        raise invalid_argument(f"audio has {len(data)} bytes; LINEAR_PCM is 16-bit samples, so the byte "
                               "count must be even")
    _check_duration(len(data) // 2, sample_rate_hz, limits)
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return DecodedAudio(samples, sample_rate_hz, channels=1)


def _decode_container(data: bytes, sample_rate_hz: int, limits: AudioLimits) -> DecodedAudio:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate_hz, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if sample_rate_hz and sample_rate_hz != rate_hz:
                raise invalid_argument(f"{RATE_FIELD} is {sample_rate_hz} but the audio's {f.format} header "
                                       f"says {rate_hz} Hz; send 0 to use the header's rate")
            _check_rate(rate_hz, f"the audio's sample rate (from its {f.format} header)", limits)
            _check_duration(frames, rate_hz, limits)
            pcm = f.read(dtype="float32", always_2d=True)  # (S, channels)
    except sf.LibsndfileError as e:
        raise invalid_argument("audio could not be decoded with encoding ENCODING_UNSPECIFIED "
                               f"(auto-detected WAV/FLAC/OGG): {e.error_string}; for headerless 16-bit "
                               "PCM set config.encoding=LINEAR_PCM and config.sample_rate_hertz") from None
    except (RuntimeError, ValueError, TypeError) as e:  # libsndfile reports some broken files otherwise
        raise invalid_argument(f"audio could not be decoded with encoding ENCODING_UNSPECIFIED: {e}"
                               ) from None
    if pcm.shape[0] == 0:
        raise invalid_argument("audio has no samples (the container is empty)")
    if not np.isfinite(pcm).all():
        raise invalid_argument("audio contains NaN or infinite samples")
    samples = pcm.mean(axis=1, dtype=np.float32) if channels > 1 else pcm[:, 0]
    return DecodedAudio(np.ascontiguousarray(samples), rate_hz, channels)


def resample(audio: DecodedAudio, target_rate_hz: int) -> np.ndarray:
    """(S',) float32 at `target_rate_hz` (soxr high quality); the same array when the rate matches."""
    if audio.sample_rate_hz == target_rate_hz:
        return audio.samples
    out = soxr.resample(audio.samples, audio.sample_rate_hz, target_rate_hz, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)

