"""The character vocabulary of the speech CTC model and greedy CTC decoding (numpy only).

Shared bit-for-bit by training (targets, WER) and serving (transcripts, word times), so it must not
import torch. Index 0 is the CTC blank.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

BLANK = 0
# blank, space, apostrophe, a-z: 29 symbols.
VOCAB: tuple[str, ...] = ("<blank>", " ", "'", *(chr(c) for c in range(ord("a"), ord("z") + 1)))
CHAR_TO_ID: dict[str, int] = {c: i for i, c in enumerate(VOCAB) if i != BLANK}

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")


def normalize_text(text: str) -> str:
    """Lower-case, strip accents, spell digits, map everything else to spaces.

    "Hello, World! It's 5." -> "hello world it's five"
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("&", " and ")
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = _NOT_ALLOWED.sub(" ", text)
    # Apostrophes only inside words ("it's"), not as quotes.
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return _SPACES.sub(" ", text).strip()


def encode(text: str) -> list[int]:
    """Token ids of already-normalized text; raises ValueError on characters outside the vocabulary."""
    try:
        return [CHAR_TO_ID[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary; call normalize_text first") from e


def decode_ids(ids: list[int] | np.ndarray) -> str:
    """Text of token ids (no CTC collapsing)."""
    return "".join(VOCAB[int(i)] for i in ids if int(i) != BLANK)


@dataclass(frozen=True)
class WordTiming:
    word: str
    start_s: float
    end_s: float


def greedy_decode(log_probs: np.ndarray) -> str:
    """Best-path CTC decoding of one utterance: argmax per frame, collapse repeats, drop blanks.

    log_probs: (T, V) for the valid frames only.
    """
    best = log_probs.argmax(axis=-1)
    keep = np.ones_like(best, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return _SPACES.sub(" ", decode_ids(best[keep & (best != BLANK)])).strip()


def greedy_word_timings(log_probs: np.ndarray, frame_s: float) -> list[WordTiming]:
    """Words of the best path with start/end times: a word spans its first to its last emitted character.

    log_probs: (T, V) valid frames; frame_s: seconds per output frame.
    """
    best = log_probs.argmax(axis=-1)
    words: list[WordTiming] = []
    chars: list[str] = []
    start = end = 0
    prev = BLANK
    for t, tok in enumerate(best.tolist()):
        if tok != BLANK and tok != prev:
            ch = VOCAB[tok]
            if ch == " ":
                if chars:
                    words.append(WordTiming("".join(chars), start * frame_s, (end + 1) * frame_s))
                    chars = []
            else:
                if not chars:
                    start = t
                chars.append(ch)
                end = t
        elif tok != BLANK and chars:
            end = t  # a held character extends the word
        prev = tok
    if chars:
        words.append(WordTiming("".join(chars), start * frame_s, (end + 1) * frame_s))
    return words
