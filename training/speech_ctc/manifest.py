"""NeMo-style JSONL speech manifests and audio loading for the speech CTC model.

Owns the on-disk format every speech data set here is read through: one JSON object per line with
``audio_filepath`` (absolute, or relative to the manifest's folder), ``duration`` (seconds),
``text`` (normalized with :func:`models.ctc_text.normalize_text`) and optionally ``speaker`` and
``sentence_id``. Written by ``nui data speech`` and ``nui data librispeech``; read by training and
evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from models.ctc_text import normalize_text

SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class Utterance:
    audio_filepath: Path  # absolute once read; written relative to the manifest's folder when inside it
    duration_s: float
    text: str
    speaker: str = ""  # voice id or speaker id
    sentence_id: str = ""


def _require(obj: dict[str, object], key: str, where: str) -> object:
    if key not in obj:
        raise ValueError(f"{where}: missing key {key!r}")
    return obj[key]


def _str_field(obj: dict[str, object], key: str, where: str, *, allow_int: bool = False) -> str:
    value = _require(obj, key, where)
    if isinstance(value, str) or (allow_int and isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise ValueError(f"{where}: {key!r} must be a string, got {type(value).__name__}")


def _seconds_field(obj: dict[str, object], key: str, where: str) -> float:
    value = _require(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{where}: {key!r} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def read_manifest(path: Path | str) -> list[Utterance]:
    """Utterances of a JSONL manifest, relative audio paths resolved against the manifest's folder.

    Blank lines are skipped; a malformed line raises ValueError naming the file and line number.
    """
    path = Path(path)
    base = path.resolve().parent
    utts: list[Utterance] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            audio = _str_field(obj, "audio_filepath", where)
            duration_s = _seconds_field(obj, "duration", where)
            text = _str_field(obj, "text", where)
            if not audio:
                raise ValueError(f"{where}: 'audio_filepath' is empty")
            optional = {k: _str_field(obj, k, where, allow_int=True)
                        for k in ("speaker", "sentence_id") if k in obj}
            audio_path = Path(audio)
            if not audio_path.is_absolute():
                audio_path = base / audio_path
            utts.append(Utterance(audio_filepath=audio_path, duration_s=duration_s, text=text, **optional))
    return utts


def write_manifest(path: Path | str, utts: Iterable[Utterance]) -> None:
    """Write utterances as JSONL, atomically (temp file + os.replace).

    Audio paths under the manifest's folder are written relative to it, others absolute. Raises
    ValueError when a text is empty or not normalized (``text != normalize_text(text)``).
    """
    path = Path(path)
    base = path.resolve().parent
    lines: list[str] = []
    for i, utt in enumerate(utts):
        if not utt.text or utt.text != normalize_text(utt.text):
            raise ValueError(f"utterance {i} ({utt.audio_filepath}): text must be non-empty and normalized, "
                             f"got {utt.text!r}")
        audio = utt.audio_filepath if utt.audio_filepath.is_absolute() else Path.cwd() / utt.audio_filepath
        audio = Path(os.path.normpath(audio))
        try:
            audio_str = audio.relative_to(base).as_posix()
        except ValueError:
            audio_str = str(audio)
        row: dict[str, object] = {"audio_filepath": audio_str, "duration": round(utt.duration_s, 4),
                                  "text": utt.text}
        if utt.speaker:
            row["speaker"] = utt.speaker
        if utt.sentence_id:
            row["sentence_id"] = utt.sentence_id
        lines.append(json.dumps(row, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_audio(path: Path | str) -> np.ndarray:
    """float32 mono samples at 16 kHz (channels averaged, other rates resampled with soxr).

    Raises ValueError naming the file when it is missing, unreadable or empty.
    """
    path = Path(path)
    try:
        audio, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot read audio file {path}: {e}") from e
    if audio.shape[0] == 0:
        raise ValueError(f"audio file {path} has no samples")
    mono = audio.mean(axis=1)
    if rate_hz != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, rate_hz, SAMPLE_RATE_HZ)
    return np.ascontiguousarray(mono, dtype=np.float32)


def seeded_sample(utts: list[Utterance], n: int, seed: int) -> list[Utterance]:
    """A seeded random sample of n clips in manifest order (all when n is 0 or too large). Manifests are
    grouped by voice, so the first n clips would cover only a few voices."""
    if not n or n >= len(utts):
        return utts
    keep = sorted(np.random.default_rng(seed).choice(len(utts), n, replace=False).tolist())
    return [utts[i] for i in keep]
