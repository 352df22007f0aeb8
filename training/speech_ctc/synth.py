"""Voices, speech synthesis and audio augmentation for the synthetic speech corpus.

Owns the registry of synthetic voices (each with a stable id used in manifests and voice splits),
running the Debian synthesizers espeak-ng, flite and festival as subprocesses (no shell), and
the numpy augmentations applied to train clips. Everything comes out as float32 mono at 16 kHz.

Voice ids: ``espeak-<accent>[+<variant>]`` (e.g. ``espeak-en-us+f3``), ``flite-<voice>``
(``flite-slt``), ``festival-<voice>`` (``festival-kal_diphone``). The mbrola voices espeak-ng lists
(``mb-us1`` ...) are not in the registry: their data is not installed and they produce no audio.
Voices of one recorded speaker share a ``speaker`` (flite ``kal``/``kal16`` and festival
``kal_diphone`` are all Kevin), so a split can keep a speaker out of training entirely.

Used by ``nui data speech`` (:mod:`training.speech_ctc.corpus`).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE_HZ = 16000

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
# espeak-ng voice variants (`espeak-ng --voices=variant`) that sound like a person talking; left out:
# whisper, croak, robots, "Demonic", "announcer" and the like. "" is the accent's own default voice.
ESPEAK_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "anika", "aunty", "belinda", "benjamin", "boris",
    "caleb", "david", "Denis", "ed", "edward", "edward2", "Gene", "Gene2", "grandma", "grandpa", "Hugo",
    "iven", "iven2", "iven3", "Jacky", "john", "Lee", "linda", "Marco", "Mario", "max", "Michael", "Mike",
    "Nguyen", "norbert", "paul", "quincy", "rob", "robert", "shelby", "steph", "steph2", "steph3",
    "travis", "victor", "zac",
)
ESPEAK_DEFAULT_WPM = 175
ESPEAK_AMPLITUDE = 70  # of 200; the default 100 clips with the klatt variants
# flite voice -> (recorded speaker, median F0 of the voice in Hz; 0 where flite ignores the setting).
FLITE_VOICES = {"kal": ("kal", 95.0), "kal16": ("kal", 95.0), "awb": ("awb", 130.0),
                "rms": ("rms", 0.0), "slt": ("slt", 170.0)}
# festival voice -> (recorded speaker, honours Duration_Stretch). The HTS voice ignores it.
FESTIVAL_VOICES = {"kal_diphone": ("kal", True), "ked_diphone": ("ked", True),
                   "cmu_us_slt_arctic_hts": ("slt", False)}
ENGINE_BINARIES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}

# Letters, apostrophes and sentence punctuation only: what text.Prompt.spoken holds. Anything else
# could be read aloud differently from its transcript, or mean something to festival's reader.
_SPEAKABLE = re.compile(r"^[A-Za-z][A-Za-z' ,.;:!?\-]*$")


class SynthesisError(RuntimeError):
    """A synthesizer failed, timed out, is missing, or produced no audio."""


@dataclass(frozen=True)
class Voice:
    id: str  # stable id, used in manifests, wav paths and split patterns
    engine: str  # "espeak", "flite" or "festival"
    name: str  # the engine's own voice name: "en-us+f3", "slt", "kal_diphone"
    speaker: str  # who the voice was built from; voices sharing one must not straddle splits
    base_f0_hz: float = 0.0  # flite pitch anchor; 0 where pitch cannot be set
    stretchable: bool = True  # whether the engine honours a speaking-rate setting


@dataclass(frozen=True)
class Prosody:
    """Per-utterance speaking style, as factors of the voice's own rate and pitch."""

    rate: float = 1.0  # > 1 speaks faster
    pitch: float = 1.0  # > 1 speaks higher (espeak and most flite voices)


@functools.cache
def all_voices() -> tuple[Voice, ...]:
    """Every registered voice, in a fixed order."""
    voices = [
        Voice(id=f"espeak-{accent}{'+' + variant if variant else ''}", engine="espeak",
              name=f"{accent}{'+' + variant if variant else ''}",
              speaker=f"espeak-{accent}+{variant or 'default'}")
        for accent in ESPEAK_ACCENTS for variant in ESPEAK_VARIANTS
    ]
    voices += [Voice(id=f"flite-{name}", engine="flite", name=name, speaker=speaker, base_f0_hz=f0)
               for name, (speaker, f0) in FLITE_VOICES.items()]
    voices += [Voice(id=f"festival-{name}", engine="festival", name=name, speaker=speaker,
                     stretchable=stretch) for name, (speaker, stretch) in FESTIVAL_VOICES.items()]
    return tuple(voices)


def get_voice(voice_id: str) -> Voice:
    """The registered voice with this id; ValueError naming close matches otherwise."""
    for voice in all_voices():
        if voice.id == voice_id:
            return voice
    close = difflib.get_close_matches(voice_id, [v.id for v in all_voices()], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown voice {voice_id!r}{hint}; list them with `nui data speech --list-voices`")


def random_prosody(voice: Voice, rng: np.random.Generator) -> Prosody:
    """Speaking rate 0.85-1.15 and pitch 0.85-1.2 of the voice's own (pitch 1.0 where it cannot vary)."""
    rate = float(rng.uniform(0.85, 1.15))
    pitch = float(rng.uniform(0.85, 1.2))
    if voice.engine == "festival" or (voice.engine == "flite" and voice.base_f0_hz <= 0):
        pitch = 1.0
    return Prosody(rate=rate if voice.stretchable else 1.0, pitch=pitch)


def _command(voice: Voice, prosody: Prosody, text_path: Path, wav_path: Path) -> list[str]:
    if voice.engine == "espeak":
        wpm = round(ESPEAK_DEFAULT_WPM * prosody.rate)
        pitch = min(99, max(0, round(50 + 100 * (prosody.pitch - 1.0))))
        return ["espeak-ng", "-v", voice.name, "-s", str(wpm), "-p", str(pitch), "-a", str(ESPEAK_AMPLITUDE),
                "-w", str(wav_path), "-f", str(text_path)]
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1.0 / prosody.rate:.3f}"]
        if voice.base_f0_hz > 0:
            cmd += ["--setf", f"int_f0_target_mean={voice.base_f0_hz * prosody.pitch:.1f}"]
        return [*cmd, "-f", str(text_path), "-o", str(wav_path)]
    raise ValueError(f"voice {voice.id}: unknown engine {voice.engine!r}")


def _check_speakable(voice: Voice, spoken: str) -> None:
    if not _SPEAKABLE.match(spoken):
        raise ValueError(f"text for {voice.id} has characters a synthesizer may not read as written: "
                         f"{spoken!r}")


def _require_binary(voice: Voice, binary: str) -> None:
    if shutil.which(binary) is None:
        raise SynthesisError(f"voice {voice.id}: {binary} is not on PATH "
                             "(apt-get install espeak-ng flite festival)")


def _run(voice: Voice, cmd: list[str], timeout_s: float, cwd: Path | None = None) -> str:
    """Run a synthesizer; its stderr tail on exit 0, SynthesisError otherwise."""
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise SynthesisError(f"voice {voice.id}: {cmd[0]} timed out after {timeout_s:g} s") from e
    except OSError as e:
        raise SynthesisError(f"voice {voice.id}: could not run {cmd[0]}: {e}") from e
    stderr = proc.stderr.decode(errors="replace").strip()[-300:]
    if proc.returncode != 0:
        raise SynthesisError(f"voice {voice.id}: {cmd[0]} exited with {proc.returncode}: {stderr}")
    return stderr


def _read_output(voice: Voice, wav_path: Path, detail: str) -> np.ndarray:
    """The synthesizer's wav as float32 mono 16 kHz; SynthesisError if absent, unreadable or silent."""
    if not wav_path.exists():
        raise SynthesisError(f"voice {voice.id}: no audio was written; {detail}")
    try:
        audio, rate_hz = sf.read(wav_path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise SynthesisError(f"voice {voice.id}: unreadable wav: {e}; {detail}") from e
    mono = audio.mean(axis=1)
    if rate_hz != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, rate_hz, SAMPLE_RATE_HZ)
    if mono.size < SAMPLE_RATE_HZ // 10 or float(np.abs(mono).max()) < 1e-3:
        raise SynthesisError(f"voice {voice.id}: the synthesizer produced silence ({mono.size} samples); {detail}")
    return np.asarray(mono, dtype=np.float32)


def synthesize(
    voice: Voice, spoken: str, prosody: Prosody | None = None, *, timeout_s: float = 60.0
) -> np.ndarray:
    """Speak `spoken` with `voice`: float32 mono audio at 16 kHz, leading/trailing silence kept.

    `spoken` must be letters, apostrophes and sentence punctuation (ValueError otherwise). Raises
    SynthesisError (naming the voice) when the binary is missing, fails, times out or gives silence.
    """
    _check_speakable(voice, spoken)
    if voice.engine == "festival":
        result = _festival(voice, [spoken], [prosody or Prosody()], timeout_s)[0]
        if isinstance(result, SynthesisError):
            raise result
        return result
    binary = ENGINE_BINARIES.get(voice.engine, voice.engine)
    _require_binary(voice, binary)
    with tempfile.TemporaryDirectory(prefix="nui-synth-") as tmp:
        text_path, wav_path = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_path.write_text(spoken + "\n", encoding="ascii")
        stderr = _run(voice, _command(voice, prosody or Prosody(), text_path, wav_path), timeout_s)
        return _read_output(voice, wav_path, stderr)


def _festival(
    voice: Voice, spoken: Sequence[str], prosodies: Sequence[Prosody], timeout_s: float
) -> list[np.ndarray | SynthesisError]:
    """Speak every text in one festival process (start-up, ~0.2 s of lexicon loading, costs more
    than a sentence); audio or the error per text. Texts are checked speakable: letters and
    punctuation only, so they are safe inside Scheme strings. Native rate, resampled by soxr."""
    _require_binary(voice, "festival")
    with tempfile.TemporaryDirectory(prefix="nui-synth-") as tmp:
        script = [f"(voice_{voice.name})"]
        for i, (text, prosody) in enumerate(zip(spoken, prosodies, strict=True)):
            script.append(f"(Parameter.set 'Duration_Stretch {1.0 / prosody.rate:.3f})")
            script.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{i}.wav" \'riff)')
        (Path(tmp) / "batch.scm").write_text("\n".join(script) + "\n", encoding="ascii")
        try:
            detail = _run(voice, ["festival", "-b", "batch.scm"], timeout_s * len(spoken), cwd=Path(tmp))
        except SynthesisError as e:
            detail = str(e)
        results: list[np.ndarray | SynthesisError] = []
        for i in range(len(spoken)):
            try:
                results.append(_read_output(voice, Path(tmp) / f"{i}.wav", detail))
            except SynthesisError as e:
                results.append(e)
        return results


def synthesize_many(
    voice: Voice, spoken: Sequence[str], prosodies: Sequence[Prosody], *, timeout_s: float = 60.0
) -> list[np.ndarray | SynthesisError]:
    """`synthesize` for several texts of one voice: audio, or the SynthesisError, per text, in order.

    festival speaks them all in one process (its start-up costs more than a sentence); a text the
    batch fails on is retried on its own, so one bad text does not fail its batch-mates. Other
    engines start fast and run once per text. ValueError for unspeakable text, as `synthesize`.
    """
    if len(spoken) != len(prosodies):
        raise ValueError(f"{len(spoken)} texts but {len(prosodies)} prosodies")
    for text in spoken:
        _check_speakable(voice, text)

    def one(text: str, prosody: Prosody) -> np.ndarray | SynthesisError:
        try:
            return synthesize(voice, text, prosody, timeout_s=timeout_s)
        except SynthesisError as e:
            return e

    if voice.engine != "festival" or len(spoken) < 2:
        return [one(t, p) for t, p in zip(spoken, prosodies, strict=True)]
    try:
        results = _festival(voice, spoken, prosodies, timeout_s)
    except SynthesisError as e:  # festival missing: every text fails the same way
        return [e] * len(spoken)
    return [one(t, p) if isinstance(r, SynthesisError) else r
            for t, p, r in zip(spoken, prosodies, results, strict=True)]


def check_voice(voice: Voice, *, timeout_s: float = 60.0) -> str | None:
    """None when the voice speaks a test sentence, else why not (missing binary, voice data, silence)."""
    try:
        synthesize(voice, "Testing one two three.", timeout_s=timeout_s)
    except SynthesisError as e:
        return str(e)
    return None


def trim_silence(audio: np.ndarray, *, pad_s: float = 0.15, threshold_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing silence down to pad_s (silence: 10 ms frames below threshold_db of the
    loudest frame)."""
    frame = SAMPLE_RATE_HZ // 100
    n_frames = audio.size // frame
    if n_frames == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > threshold_db)
    pad = round(pad_s * SAMPLE_RATE_HZ)
    start = max(0, int(loud[0]) * frame - pad)
    end = min(audio.size, (int(loud[-1]) + 1) * frame + pad)
    return audio[start:end]


def normalize_peak(audio: np.ndarray, peak_db: float = -3.0) -> np.ndarray:
    """Scale so the largest sample sits at peak_db dBFS (silence stays silence)."""
    peak = float(np.abs(audio).max(initial=0.0))
    if peak <= 0:
        return audio
    return (audio * (10 ** (peak_db / 20) / peak)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write 16 kHz mono 16-bit PCM, atomically (temp file + rename), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sf.write(tmp, np.clip(audio, -1.0, 1.0), SAMPLE_RATE_HZ, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Augmentation (numpy + soxr). Each augmented copy is drawn from its own seed, so the corpus is
# reproducible and does not depend on the number of workers.

NOISE_KINDS = ("white", "pink", "brown")


@dataclass(frozen=True)
class AugmentParams:
    speed: float  # resampling factor: > 1 is faster and higher, as in Kaldi speed perturbation
    pitch_semitones: float  # pitch shift at constant duration; 0 = none
    reverb_rt60_s: float  # decay time of the synthetic room; 0 = dry
    telephone: bool  # 300-3400 Hz band-pass
    noise: str  # "none" or one of NOISE_KINDS
    snr_db: float  # speech-to-noise ratio when noise != "none"
    gain_db: float  # final level change, reduced where it would clip


def sample_augment(rng: np.random.Generator) -> AugmentParams:
    """Draw one augmentation: speed 0.9-1.1 always; pitch ±2 semitones (p=0.5); reverb RT60 0.15-0.7 s
    (p=0.3); telephone band (p=0.15); white/pink/brown noise at 10-30 dB SNR (p=0.6); gain -12..+6 dB."""
    speed = float(rng.uniform(0.9, 1.1))
    pitch = float(rng.uniform(-2.0, 2.0)) if rng.random() < 0.5 else 0.0
    rt60 = float(rng.uniform(0.15, 0.7)) if rng.random() < 0.3 else 0.0
    telephone = bool(rng.random() < 0.15)
    noise = str(rng.choice(NOISE_KINDS)) if rng.random() < 0.6 else "none"
    snr_db, gain_db = float(rng.uniform(10.0, 30.0)), float(rng.uniform(-12.0, 6.0))
    return AugmentParams(speed=speed, pitch_semitones=pitch, reverb_rt60_s=rt60, telephone=telephone,
                         noise=noise, snr_db=snr_db, gain_db=gain_db)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (duration / factor, pitch x factor) by resampling."""
    return np.asarray(soxr.resample(audio, SAMPLE_RATE_HZ * factor, SAMPLE_RATE_HZ), dtype=np.float32)


def time_stretch(audio: np.ndarray, factor: float) -> np.ndarray:
    """Make audio `factor` times longer at the same pitch: WSOLA (Verhelst & Roelands, ICASSP 1993).

    32 ms Hann frames at 50% overlap; each input frame is moved by up to ±8 ms to best continue the
    previous one (cross-correlation), which avoids the phase jumps of plain overlap-add.
    """
    frame = int(0.032 * SAMPLE_RATE_HZ)
    hop_out, tol = frame // 2, frame // 4
    hop_in = hop_out / factor
    n_out = max(1, round(audio.size * factor))
    n_frames = n_out // hop_out + 2
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame)).astype(np.float32)
    padded = np.pad(audio.astype(np.float32), (tol, int(n_frames * hop_in) + 2 * frame + 2 * tol))
    out = np.zeros(n_frames * hop_out + frame, dtype=np.float32)
    prev = tol
    for k in range(n_frames):
        nominal = tol + round(k * hop_in)
        if k == 0:
            pos = nominal
        else:
            target = padded[prev + hop_out: prev + hop_out + frame]
            lo = nominal - tol
            region = padded[lo: nominal + tol + frame]
            pos = lo + int(np.argmax(np.correlate(region, target, mode="valid")))
        out[k * hop_out: k * hop_out + frame] += padded[pos: pos + frame] * window
        prev = pos
    # Output frame k starts at k * hop_out; the first hop_out samples only have half the window.
    return out[:n_out]


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch by `semitones` at the same duration: time-stretch, then resample back."""
    factor = 2.0 ** (semitones / 12.0)
    shifted = change_speed(time_stretch(audio, factor), factor)
    if shifted.size >= audio.size:
        return shifted[: audio.size]
    return np.pad(shifted, (0, audio.size - shifted.size))


def colored_noise(n_samples: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f^0 (white), 1/f (pink) or 1/f^2 (brown) power spectrum."""
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    if kind not in exponents:
        raise ValueError(f"noise kind must be one of {sorted(exponents)}, got {kind!r}")
    noise = rng.standard_normal(n_samples)
    if exponents[kind] > 0 and n_samples > 1:
        freqs_hz = np.fft.rfftfreq(n_samples, 1.0 / SAMPLE_RATE_HZ)
        freqs_hz[0] = freqs_hz[1]
        noise = np.fft.irfft(np.fft.rfft(noise) / freqs_hz ** (exponents[kind] / 2), n_samples)
    noise -= noise.mean()
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """audio + noise scaled to snr_db below the audio's power."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-20
    return (audio + noise * np.sqrt(power / noise_power / 10 ** (snr_db / 10))).astype(np.float32)


def band_pass(
    audio: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0, edge_hz: float = 150.0
) -> np.ndarray:
    """Keep low_hz..high_hz with raised-cosine edges of edge_hz (a telephone channel by default)."""
    freqs_hz = np.fft.rfftfreq(audio.size, 1.0 / SAMPLE_RATE_HZ)
    gain = np.ones_like(freqs_hz)
    rise = np.clip((freqs_hz - (low_hz - edge_hz)) / edge_hz, 0.0, 1.0)
    fall = np.clip(((high_hz + edge_hz) - freqs_hz) / edge_hz, 0.0, 1.0)
    gain *= 0.5 - 0.5 * np.cos(np.pi * rise)
    gain *= 0.5 - 0.5 * np.cos(np.pi * fall)
    return np.fft.irfft(np.fft.rfft(audio) * gain, audio.size).astype(np.float32)


def reverb(
    audio: np.ndarray, rt60_s: float, rng: np.random.Generator, *, direct_to_reverb_db: float = 3.0
) -> np.ndarray:
    """Convolve with a synthetic room: a direct impulse plus exponentially decaying noise reaching -60 dB
    at rt60_s. Same length as the input, same RMS."""
    n_ir = max(2, round(rt60_s * SAMPLE_RATE_HZ))
    t_s = np.arange(n_ir) / SAMPLE_RATE_HZ
    tail = rng.standard_normal(n_ir) * np.exp(-6.9078 * t_s / rt60_s)  # ln(1000) = 6.9078: -60 dB
    tail[0] = 0.0
    tail *= np.sqrt(10 ** (-direct_to_reverb_db / 10) / (np.sum(tail**2) + 1e-12))
    tail[0] = 1.0
    n_fft = 1 << int(np.ceil(np.log2(audio.size + n_ir)))
    wet = np.fft.irfft(np.fft.rfft(audio, n_fft) * np.fft.rfft(tail, n_fft), n_fft)[: audio.size]
    rms_in = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean(wet**2)) + 1e-12
    return (wet * (rms_in / rms_out)).astype(np.float32)


def apply_gain(audio: np.ndarray, gain_db: float, *, max_peak: float = 0.99) -> np.ndarray:
    """Scale by gain_db, but never past max_peak: the gain is lowered instead of clipping."""
    scaled = audio * 10 ** (gain_db / 20)
    peak = float(np.abs(scaled).max(initial=0.0))
    if peak > max_peak:
        scaled *= max_peak / peak
    return scaled.astype(np.float32)


def apply_augment(audio: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """Speed, pitch, reverb, telephone band, noise, gain: in that order (noise after the channel)."""
    out = change_speed(audio, params.speed)
    if params.pitch_semitones:
        out = pitch_shift(out, params.pitch_semitones)
    if params.reverb_rt60_s > 0:
        out = reverb(out, params.reverb_rt60_s, rng)
    if params.telephone:
        out = band_pass(out)
    if params.noise != "none":
        out = add_noise(out, colored_noise(out.size, params.noise, rng), params.snr_db)
    return apply_gain(out, params.gain_db)


def augment(audio: np.ndarray, seed: int) -> tuple[np.ndarray, AugmentParams]:
    """One augmented copy of 16 kHz audio, fully determined by seed; returns it with its parameters."""
    rng = np.random.default_rng(seed)
    params = sample_augment(rng)
    return apply_augment(audio, params, rng), params
