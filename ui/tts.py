"""Speech synthesis for the assistant's replies: espeak-ng (or flite) run as a subprocess.

    voice = Speaker.find()              # None when neither engine is installed
    rate_hz, samples = voice.say("Hello")

The text goes through stdin / a temporary file, never the command line, so it cannot be read as an
option. Long replies are cut at `max_chars` (the screen shows everything; the voice reads the start).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


class SynthesisError(RuntimeError):
    pass


@dataclass(frozen=True)
class Speaker:
    engine: str  # "espeak-ng" or "flite"
    binary: str
    voice: str = ""
    max_chars: int = 600
    timeout_s: float = 20.0

    @staticmethod
    def find() -> Speaker | None:
        for engine in ("espeak-ng", "flite"):
            path = shutil.which(engine)
            if path:
                return Speaker(engine, path, voice="en-us" if engine == "espeak-ng" else "slt")
        return None

    def say(self, text: str) -> tuple[int, np.ndarray]:
        """(sample rate, int16 mono samples) of `text` spoken; SynthesisError when the engine fails."""
        text = " ".join(text.split())[: self.max_chars]
        if not text:
            raise SynthesisError("nothing to say")
        try:
            if self.engine == "espeak-ng":
                done = subprocess.run([self.binary, "-v", self.voice, "-s", "165", "--stdout"], input=text.encode(),
                                      capture_output=True, timeout=self.timeout_s, check=True)
                wav = done.stdout
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "t.txt").write_text(text, encoding="utf-8")
                    subprocess.run([self.binary, "-voice", self.voice, "-f", str(Path(tmp) / "t.txt"),
                                    "-o", str(Path(tmp) / "t.wav")], capture_output=True, timeout=self.timeout_s,
                                   check=True)
                    wav = (Path(tmp) / "t.wav").read_bytes()
            samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
        except (subprocess.SubprocessError, OSError, sf.LibsndfileError) as e:
            raise SynthesisError(f"{self.engine} failed: {e}") from e
        return int(rate), samples
