"""Request audio decoding and validation (no gRPC): containers, raw PCM, rates, channels, limits."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server.audio import AudioEncoding, AudioLimits, DecodedAudio, decode_audio, resample
from server.errors import RequestError
from tests.server.helpers import encode, make_clip, pcm16

LIMITS = AudioLimits()
AUTO, PCM = AudioEncoding.AUTO, AudioEncoding.LINEAR_PCM


def _error(data: bytes, encoding: AudioEncoding = AUTO, rate_hz: int = 0,
           limits: AudioLimits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as e:
        decode_audio(data, encoding, rate_hz, limits)
    return e.value


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"),
                                         ("OGG", "VORBIS")])
def test_containers_decode(fmt: str, subtype: str) -> None:
    clip = make_clip(0.5, seed=1)
    audio = decode_audio(encode(clip, fmt=fmt, subtype=subtype), AUTO, 0, LIMITS)
    assert (audio.sample_rate_hz, audio.channels, len(audio.samples)) == (16000, 1, 8000)
    assert audio.samples.dtype == np.float32
    if fmt != "OGG":  # lossy
        np.testing.assert_allclose(audio.samples, clip, atol=1e-4)


def test_linear_pcm_decodes_little_endian_int16() -> None:
    audio = decode_audio(np.array([0, 16384, -32768], dtype="<i2").tobytes(), PCM, 16000, LIMITS)
    np.testing.assert_array_equal(audio.samples, [0.0, 0.5, -1.0])
    assert audio.duration_s == pytest.approx(3 / 16000)


def test_stereo_is_downmixed() -> None:
    stereo = np.stack([make_clip(0.2, seed=1), make_clip(0.2, seed=2)], axis=1)
    audio = decode_audio(encode(stereo, subtype="FLOAT"), AUTO, 0, LIMITS)
    assert audio.channels == 2
    np.testing.assert_allclose(audio.samples, stereo.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled(rate_hz: int) -> None:
    audio = decode_audio(encode(make_clip(0.5, seed=0, sample_rate_hz=rate_hz), rate_hz), AUTO, 0, LIMITS)
    out = resample(audio, 16000)
    assert out.dtype == np.float32 and abs(len(out) - 8000) <= 1


def test_resample_is_a_no_op_at_the_model_rate() -> None:
    audio = DecodedAudio(make_clip(0.1, seed=0), 16000, 1)
    assert resample(audio, 16000) is audio.samples


def test_empty_audio() -> None:
    e = _error(b"")
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.message == "audio is empty"


def test_garbage_names_audio_and_encoding() -> None:
    e = _error(b"definitely not a wav file" * 20)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio could not be decoded" in e.message and "ENCODING_UNSPECIFIED" in e.message


def test_pcm_needs_a_rate_and_whole_samples() -> None:
    e = _error(pcm16(make_clip(0.1, seed=0)), PCM, 0)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "config.sample_rate_hertz is required" in e.message
    e = _error(b"\x00" * 1001, PCM, 16000)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "1001 bytes" in e.message


@pytest.mark.parametrize("rate_hz", [4000, 96000])
def test_rate_outside_range(rate_hz: int) -> None:
    e = _error(b"\x00\x00" * 100, PCM, rate_hz)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"config.sample_rate_hertz is {rate_hz} Hz; allowed: 8000..48000 Hz" in e.message
    e = _error(encode(make_clip(0.1, seed=0, sample_rate_hz=rate_hz), rate_hz))
    assert f"sample rate (from its WAV header) is {rate_hz} Hz" in e.message


def test_container_rate_must_match_config() -> None:
    e = _error(encode(make_clip(0.1, seed=0)), AUTO, 8000)
    assert "config.sample_rate_hertz is 8000 but the audio's WAV header says 16000 Hz" in e.message
    assert decode_audio(encode(make_clip(0.1, seed=0)), AUTO, 16000, LIMITS).sample_rate_hz == 16000


def test_too_long_is_out_of_range() -> None:
    limits = AudioLimits(max_duration_s=1.0)
    e = _error(encode(make_clip(1.5, seed=0)), limits=limits)
    assert e.code == grpc.StatusCode.OUT_OF_RANGE and e.message == "audio is 1.50 s long; the limit is 1 s"
    e = _error(b"\x00\x00" * 16001, PCM, 16000, limits)
    assert e.code == grpc.StatusCode.OUT_OF_RANGE


def test_non_finite_samples() -> None:
    clip = make_clip(0.1, seed=0)
    clip[5] = np.nan
    assert "NaN" in _error(encode(clip, subtype="FLOAT")).message


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        AudioLimits(min_sample_rate_hz=16000, max_sample_rate_hz=8000)
    with pytest.raises(ValueError):
        AudioLimits(max_duration_s=0)
