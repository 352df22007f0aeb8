"""Seeded free-text descriptions with their expected (symptom id, present) pairs, for tuning and evaluation.

    tune = descriptions("tune")   # TUNE phrasings x TUNE_TEMPLATES, seed 11: picks the matcher's threshold
    test = descriptions("eval")   # EVAL phrasings x EVAL_TEMPLATES, seed 23: what `nui eval symptom-text` reports

A template holds slots {S1}.. (a present symptom: a whole statement, "I have" + noun phrase, or "I keep"
+ verb phrase), {N1}.. (an absent symptom as a bare noun phrase, the article dropped) and {G1} (an absent
symptom as a verb phrase, for "I'm not ... anymore") and {X1} (a clause that names no symptom: "I work
night shifts", expected to match nothing). Each description draws distinct symptoms that have
the forms its slots need. The tuning and evaluation sets share neither phrasings nor templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.symptom_text.phrasings import EVAL, EVAL_DISTRACTORS, TUNE, TUNE_DISTRACTORS, Phrasings

TUNE_TEMPLATES: tuple[str, ...] = (
    "{S1}.",
    "{S1} and also {S2}.",
    "{S1} - no {N1}.",
    "{S1}, but I do not have {N1}.",
    "There's no {N1}. {S1}.",
    "{S1} with no {N1}.",
    "I have not had {N1}, and {S1}.",
    "{S1}, {S2}.",
    "Since last night {S1} and {S2}; no {N1}.",
    "{S1}. No {N1}, no {N2}.",
    "I'm not {G1} any more. {S1}.",
    "{S1} and {S2} but no {N1}.",
    "{X1}. {S1}.",
    "{S1}, {X1}.",
    "{X1} and now {S1}; no {N1}.",
)
EVAL_TEMPLATES: tuple[str, ...] = (
    "{S1}",
    "{S1} and {S2}",
    "{S1}, {S2} and {S3}",
    "{S1}, no {N1} though",
    "{S1} but no {N1} or {N2}",
    "I don't have {N1}, but {S1}",
    "{S1}. I haven't had any {N1}.",
    "{S1}. Never had {N1} before.",
    "Patient denies {N1} and {N2}. {S1}.",
    "I'm not {G1} anymore, but {S1}",
    "{S1} without {N1}",
    "Hi doctor, {S1} since Monday and {S2}.",
    "For three days {S1}; no {N1}, no {N2}.",
    "{S1} and {S2}, but I don't have {N1}",
    "{S1} for a week now. Also {S2}. No {N1}.",
    "{X1}. {S1} and {S2}.",
    "{S1}, but {X1}.",
    "{X1}; {S1}, no {N1}.",
)
_SLOT = re.compile(r"\{([SNG])(\d)\}")
_SLOT_X = re.compile(r"\{X(\d)\}")


@dataclass(frozen=True)
class Description:
    text: str
    expected: tuple[tuple[str, bool], ...]  # (symptom id, present), in slot order


def _bare(np_phrase: str) -> str:
    """"a splitting headache" -> "splitting headache" (for "no ...")."""
    return re.sub(r"^(a|an|some)\s+", "", np_phrase)


def _present(p: Phrasings, rng: np.random.Generator) -> str:
    options = [*p.say, *(f"I have {x}" for x in p.np), *(f"I keep {x}" for x in p.ing)]
    return str(options[int(rng.integers(len(options)))])


def _fits(kind: str, p: Phrasings) -> bool:
    if kind == "N":
        return any(not x.startswith("no ") for x in p.np)
    if kind == "G":
        return bool(p.ing)
    return bool(p.say or p.np or p.ing)


def _fill(template: str, phrasings: dict[str, Phrasings], distractors: tuple[str, ...],
          rng: np.random.Generator) -> Description | None:
    for num in sorted(set(_SLOT_X.findall(template))):
        template = template.replace("{X" + num + "}", distractors[int(rng.integers(len(distractors)))])
    slots = _SLOT.findall(template)
    ids = sorted(phrasings)
    chosen: dict[str, str] = {}
    used: set[str] = set()
    for kind, num in slots:
        pool = [i for i in ids if i not in used and _fits(kind, phrasings[i])]
        if not pool:
            return None
        sid = pool[int(rng.integers(len(pool)))]
        used.add(sid)
        chosen[kind + num] = sid
    text = template
    expected = []
    for kind, num in slots:
        sid = chosen[kind + num]
        p = phrasings[sid]
        if kind == "S":
            phrase = _present(p, rng)
        elif kind == "N":
            nps = [_bare(x) for x in p.np if not x.startswith("no ")]
            phrase = nps[int(rng.integers(len(nps)))]
        else:
            phrase = p.ing[int(rng.integers(len(p.ing)))]
        text = text.replace("{" + kind + num + "}", phrase, 1)
        expected.append((sid, kind == "S"))
    text = text[:1].upper() + text[1:]
    return Description(text=text, expected=tuple(expected))


def descriptions(split: Literal["tune", "eval"], n: int | None = None, seed: int | None = None) -> list[Description]:
    """`n` seeded descriptions (default 120 for tune, 180 for eval), cycling through the split's templates."""
    phrasings, templates, distractors = ((TUNE, TUNE_TEMPLATES, TUNE_DISTRACTORS) if split == "tune"
                                         else (EVAL, EVAL_TEMPLATES, EVAL_DISTRACTORS))
    n = n if n is not None else (120 if split == "tune" else 180)
    rng = np.random.default_rng(seed if seed is not None else (11 if split == "tune" else 23))
    out: list[Description] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and attempts < 50 * n:
        d = _fill(templates[attempts % len(templates)], phrasings, distractors, rng)
        attempts += 1
        if d is not None and d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return out


def all_phrasings(split: Literal["tune", "eval"]) -> list[tuple[str, str]]:
    """(symptom id, phrase) for every phrasing of a split (the parity gate's evaluation phrases)."""
    table = TUNE if split == "tune" else EVAL
    return [(sid, x) for sid, p in sorted(table.items()) for x in (*p.np, *p.say, *p.ing)]
