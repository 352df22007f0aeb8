"""`nui listen` through a real ALSA capture device that plays a WAV: the ALSA `file` plugin's `infile`
over the `null` device, declared in a test-only ~/.asoundrc (HOME points at a temporary folder), so
PortAudio (sounddevice) opens and reads it like any microphone. No mock of sounddevice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.ui.conftest import ROOT, ServerProcess, say

SAID = "i have a fever and a cough"
RATE_HZ = 16000


def _sounddevice_works() -> bool:
    try:
        import sounddevice  # noqa: F401
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _sounddevice_works(),
                                reason="PortAudio is not installed (libportaudio2; bash scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def alsa_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose .asoundrc declares `nui_wav_mic`: capture returns the sentence (16 kHz S16 mono raw),
    preceded by 0.5 s and followed by 2 s of silence."""
    home = tmp_path_factory.mktemp("alsa_home")
    speech, rate = sf.read(say(SAID, home / "speech.wav", voice="en-us"), dtype="float32")
    speech = soxr.resample(speech, rate, RATE_HZ)
    pcm = np.concatenate([np.zeros(RATE_HZ // 2), speech, np.zeros(2 * RATE_HZ)])
    (home / "mic.raw").write_bytes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    (home / ".asoundrc").write_text(f"""
pcm.nui_wav_mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{home / 'mic.raw'}"
    format "raw"
    hint {{ show on description "nui test microphone (plays a WAV)" }}
}}
""")
    return home


def listen(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ui.listen", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(home)})


def test_list_devices_shows_the_alsa_device(alsa_home: Path) -> None:
    done = listen(alsa_home, "--list-devices")
    assert done.returncode == 0 and "nui_wav_mic" in done.stdout


def test_transcribes_the_alsa_microphone(alsa_home: Path, server: ServerProcess) -> None:
    done = listen(alsa_home, "--server", server.address, "--device", "nui_wav_mic", "--sample-rate", str(RATE_HZ),
                  "--duration-s", "4", "--no-stream")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [SAID], done.stdout
    assert "utterance by utterance" in done.stderr


def test_device_errors_are_one_clear_line(alsa_home: Path, tmp_path: Path, server: ServerProcess) -> None:
    done = listen(alsa_home, "--server", server.address, "--device", "42")
    assert done.returncode == 1 and done.stderr.strip() == \
        "nui listen: error: --device 42 is not an input device; inputs: 0 (nui_wav_mic)"
    bare = listen(tmp_path, "--list-devices")  # no .asoundrc: this machine's own devices
    if bare.stdout.strip():
        pytest.skip("this machine has a real input device, so 'no device' cannot be shown here")
    done = listen(tmp_path, "--server", server.address)
    assert done.returncode == 1 and "no audio input device found" in done.stderr and "Traceback" not in done.stderr
