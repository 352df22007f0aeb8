"""What the UI refuses before calling the server: empty, silent, too short/long/large audio; empty, too
large, unreadable images; and the TTS voice."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ui import audio, images
from ui.audio import AudioProblem, prepare_audio
from ui.images import ImageProblem, prepare_image
from ui.tts import Speaker


def tone(seconds: float, rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_good_audio_becomes_mono_pcm16_wav() -> None:
    stereo = np.stack([tone(1.0), tone(1.0)], axis=1)
    clip = prepare_audio((16000, (stereo * 32767).astype(np.int16)))
    data, rate = sf.read(io.BytesIO(clip.wav), dtype="int16")
    assert rate == 16000 and data.ndim == 1 and len(data) == 16000 and abs(clip.duration_s - 1.0) < 1e-6
    assert -14 < clip.peak_dbfs < -13  # a 0.3 sine: RMS 0.212 = -13.5 dBFS
    assert sf.info(io.BytesIO(clip.wav)).subtype == "PCM_16"


@pytest.mark.parametrize(("value", "message"), [
    (None, "No audio"),
    ((16000, np.zeros(0, dtype=np.float32)), "empty"),
    ((16000, tone(0.1)), "only 0.10 s"),
    ((16000, np.zeros(16000, dtype=np.float32)), "Only silence"),
    ((16000, tone(1.0, amplitude=0.001)), "Only silence"),  # -60 dBFS: a muted microphone's hiss
    ((8000, tone(61.0, rate=8000)), "61 s long; the limit is 60 s"),
])
def test_bad_audio_is_refused_with_a_reason(value: object, message: str) -> None:
    with pytest.raises(AudioProblem, match=message):
        prepare_audio(value)  # type: ignore[arg-type]


def test_audio_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.flac"
    sf.write(good, tone(0.5, 44100), 44100)
    assert prepare_audio(good).sample_rate_hz == 44100
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioProblem, match=r"empty\.wav is empty"):
        prepare_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wav file")
    with pytest.raises(AudioProblem, match=r"Cannot read junk\.wav as audio"):
        prepare_audio(tmp_path / "junk.wav")
    monkeypatch.setattr(audio, "MAX_FILE_BYTES", 1000)  # a huge file, scaled down
    with pytest.raises(AudioProblem, match="the limit is 0 MB"):
        prepare_audio(good)


def test_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png, bmp = tmp_path / "a.png", tmp_path / "b.bmp"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(png)
    Image.new("RGB", (20, 10), (0, 0, 255)).save(bmp)
    assert prepare_image(png) == png.read_bytes()  # sent as uploaded
    with Image.open(io.BytesIO(prepare_image(bmp))) as converted:  # the server reads no BMP: re-encoded
        assert converted.format == "PNG" and converted.size == (20, 10)
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageProblem, match=r"e\.png is empty"):
        prepare_image(tmp_path / "e.png")
    (tmp_path / "t.jpg").write_text("hello")
    with pytest.raises(ImageProblem, match="not an image"):
        prepare_image(tmp_path / "t.jpg")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(ImageProblem, match="20x10 pixels"):
        prepare_image(png)
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(ImageProblem, match="the limit is 0 MB"):
        prepare_image(png)


def test_speaker_says_text() -> None:
    speaker = Speaker.find()
    if speaker is None:
        pytest.skip("neither espeak-ng nor flite is installed")
    rate, samples = speaker.say("--help me, this starts with dashes")  # text is never read as an option
    assert rate >= 8000 and samples.dtype == np.int16 and len(samples) / rate > 1.0
