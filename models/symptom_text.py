"""Free-text symptom understanding: what a person says or types -> symptom terms, present or absent, with a
confidence, and the parts of the text nothing matched.

Numpy only (the server imports this module); the sentence encoder is passed in as a callable (the exported
all-MiniLM-L6-v2 in serving, any deterministic stand-in in tests). Shapes: N phrases, P table phrases,
E embedding size; embeddings are L2-normalised, so a dot product is the cosine similarity.

    table = PhraseTable.load(version_folder)
    [result] = understand(["my head is pounding and I can't keep food down, no fever though"],
                          encoder, table, threshold=0.6)
    result.findings  # Headache present, Vomiting present, Fever absent (+ confidence and character spans)

Steps, all rule-based except the last:
1. Words with character offsets (lower-cased, curly apostrophes straightened).
2. Protected phrases: table phrases that contain a negation or separator word ("can't keep food down",
   "no appetite", "pins and needles") are found first; their words are never read as negation/separators.
3. Chunks (NegEx-style, Chapman et al. 2001, with its pre-negation triggers and scope terminators): sentence
   punctuation and "but / though / however / except ..." end a chunk and any negation scope; commas and
   "and / or / nor / plus" end a chunk but a negation scope runs on ("no fever, cough or chills" negates
   all three) unless the next chunk starts a new clause ("no fever, my head hurts"). A pre-negation trigger
   ("no", "not", "never", "without", "denies", "don't have", ...) starts a new, negated chunk, so "headache
   without fever" is two chunks. A post-negation trigger at a chunk's end ("... is gone", "... went away")
   negates that chunk. Inability is not negation: "can't", "cannot", "unable to" stay words of the phrase.
4. Fillers are stripped from a chunk's edges ("I've had a terrible | headache | since Tuesday"); a chunk
   with no content word left is dropped silently (it is not a symptom description that was missed).
5. Matching: each chunk's embedding against the table of symptom names, synonyms and lay phrasings; the
   best phrase's cosine is the confidence, kept when >= `threshold`. A chunk below the threshold is retried
   as word windows (1..MAX_WINDOW_WORDS words, starting and ending on a content word), keeping the best
   non-overlapping windows that reach the threshold ("fever chills cough" without commas). What is still
   unmatched is reported as not understood.
The same symptom said twice keeps its most confident mention.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (N, E) float32, rows L2-normalised

PHRASES_FILE = "phrases.json"
EMBEDDINGS_FILE = "phrase_embeddings.safetensors"
MAX_WINDOW_WORDS = 4

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_HARD_GAP = re.compile(r"[.!?;:\n]")
_SOFT_GAP = re.compile(r"[,/&()]")

PRE_NEGATION: tuple[str, ...] = (
    "no", "not", "never", "without", "denies", "deny", "denied", "denying", "none", "neither", "nor",
    "don't", "dont", "do not", "doesn't", "doesnt", "does not", "didn't", "didnt", "did not",
    "haven't", "havent", "have not", "hasn't", "hasnt", "has not", "hadn't", "had not",
    "isn't", "is not", "aren't", "are not", "wasn't", "was not", "weren't", "am not", "ain't",
    "free of", "absence of", "negative for", "no longer", "rules out", "ruled out", "no sign of",
    "no signs of", "no history of", "never had", "not any",
)
POST_NEGATION: tuple[str, ...] = (
    "is gone", "are gone", "has gone", "have gone", "gone", "went away", "has gone away", "have gone away",
    "is over", "are over", "resolved", "has resolved", "disappeared", "has disappeared", "cleared up",
    "has cleared up", "has stopped", "have stopped", "stopped",
)
# Inability or persistence, not absence: these words stay part of the phrase.
PSEUDO_NEGATION: tuple[str, ...] = (
    "can not", "cannot", "can't", "cant", "couldn't", "could not", "unable", "not able", "won't stop",
    "doesn't stop", "does not stop", "won't go away", "doesn't go away", "does not go away", "not going away",
    "not getting better", "no better", "not better", "not only",
)
HARD_WORDS: tuple[str, ...] = ("but", "though", "although", "however", "except", "yet", "whereas", "apart from",
                               "aside from", "other than", "besides")
SOFT_WORDS: tuple[str, ...] = ("and", "or", "plus", "as well as", "along with", "together with", "also", "then")
def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# A chunk starting with one of these is a new clause: a negation scope does not carry into it.
CLAUSE_STARTERS = _set(
    "i i'm im i've ive i'd i'll me my mine it it's its there there's she he they we our his her their the this "
    "that these those yesterday today lately recently sometimes")
LEAD_FILLERS = _set(
    "i i'm im i've ive i'd am is are was were be been being have has had having got get gets getting gotten "
    "keep keeps kept a an the some any bit little lot lots of really very quite pretty so too just still "
    "also kind sort bad badly terrible terribly awful horrible severe constant mild slight slightly "
    "experiencing experience suffering suffer suffered from with like seem seems been lately recently "
    "sometimes often always occasional occasionally frequent frequently new now again started starting "
    "start begun began developed develop noticed notice think thought guess maybe probably it that this "
    "there which who well oh um uh hi hello doctor doc yes yeah okay ok please")
TRAIL_FILLERS = _set(
    "though too also either as well anymore any more lately recently today tonight yesterday now still "
    "again all time times day days week weeks month months year years hour hours night nights morning "
    "mornings evening evenings afternoon weekend since for over past last this the a an few couple "
    "several two three four five six seven eight nine ten 1 2 3 4 5 6 7 8 9 10 ago or so at in on "
    "during every each monday tuesday wednesday thursday friday saturday sunday much really badly "
    "constantly either whatsoever whatever at all it that there before")
STOPWORDS = LEAD_FILLERS | TRAIL_FILLERS | _set(
    "and or but not no nor my me mine your to for of in on at by is are was it its")


# ---- the phrase table -------------------------------------------------------------------------------------

@dataclass
class PhraseTable:
    """Symptom phrasings and their embeddings, grouped by symptom.

    phrases[i] names symptom_ids[symptom[i]]; `source` says where it came from ("name", "synonym",
    "lay": HPO layperson synonym or faker string, "lexicon": models/symptom_lexicon.py).
    """

    symptom_ids: list[str]  # (S,) the knowledge base's symptom ids, in its order
    symptom_names: list[str]  # (S,)
    phrases: list[str]  # (P,)
    symptom: np.ndarray  # (P,) int64 index into symptom_ids
    source: list[str]  # (P,)
    embeddings: np.ndarray  # (P, E) float32, L2-normalised
    _protected: list[tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.phrases) == len(self.symptom) == len(self.source) == len(self.embeddings)):
            raise ValueError(f"phrase table sizes differ: {len(self.phrases)} phrases, {len(self.symptom)} "
                             f"symptom indices, {len(self.source)} sources, {len(self.embeddings)} embeddings")
        if len(self.symptom) and not (int(self.symptom.min()) >= 0 and int(self.symptom.max()) < len(self.symptom_ids)):
            raise ValueError("phrase table symptom index out of range")
        self._protected = protected_phrases(self.phrases)

    @property
    def protected(self) -> list[tuple[str, ...]]:
        return self._protected

    def save(self, folder: Path) -> list[Path]:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # one list per column, no spaces: keys repeated per phrase were half of the file (the bundle has a
        # size budget)
        meta = {"symptoms": {"id": self.symptom_ids, "name": self.symptom_names},
                "phrases": {"text": self.phrases, "symptom": self.symptom.tolist(), "source": self.source}}
        paths = [folder / PHRASES_FILE, folder / EMBEDDINGS_FILE]
        paths[0].write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
        # int8 with one scale per row: half the size of FP16 (the bundle has a size budget), cosine to the
        # FP32 table > 0.9999
        scale = np.maximum(np.abs(self.embeddings).max(axis=1, keepdims=True), 1e-12) / 127.0  # (P, 1)
        save_file({"embeddings_int8": np.round(self.embeddings / scale).astype(np.int8),
                   "scales": scale.astype(np.float32)}, str(paths[1]))
        return paths

    @classmethod
    def load(cls, folder: Path) -> PhraseTable:
        from safetensors.numpy import load_file

        try:
            meta = json.loads((folder / PHRASES_FILE).read_text(encoding="utf-8"))
            stored = load_file(str(folder / EMBEDDINGS_FILE))
            emb = stored["embeddings_int8"].astype(np.float32) * stored["scales"]
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # unit rows again
            symptoms, phrases = meta["symptoms"], meta["phrases"]
            return cls(symptom_ids=list(symptoms["id"]), symptom_names=list(symptoms["name"]),
                       phrases=list(phrases["text"]), symptom=np.asarray(phrases["symptom"], dtype=np.int64),
                       source=list(phrases["source"]), embeddings=emb)
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder} does not hold a valid symptom phrase table: {e}") from e


def table_phrases(symptoms: Sequence[tuple[str, str, Iterable[str], Iterable[str]]],
                  lexicon: dict[str, tuple[str, ...]]) -> tuple[list[str], np.ndarray, list[str]]:
    """(phrases, symptom index (P,), source) from (id, name, synonyms, lay names) per symptom + a lexicon.

    Phrases are lower-cased and de-duplicated per symptom; lexicon entries for ids not in `symptoms` are
    ignored (the caller reports them).
    """
    index = {sid: i for i, (sid, _, _, _) in enumerate(symptoms)}
    phrases: list[str] = []
    owner: list[int] = []
    source: list[str] = []
    seen: set[tuple[int, str]] = set()

    def add(i: int, text: str, src: str) -> None:
        t = normalise(text).strip()
        if t and (i, t) not in seen:
            seen.add((i, t))
            phrases.append(t)
            owner.append(i)
            source.append(src)

    for i, (sid, name, synonyms, lay) in enumerate(symptoms):
        add(i, name, "name")
        for t in lay:
            add(i, t, "lay")
        for t in synonyms:
            add(i, t, "synonym")
        for t in lexicon.get(sid, ()):
            add(i, t, "lexicon")
    del index
    return phrases, np.array(owner, dtype=np.int64), source


# ---- chunking and negation --------------------------------------------------------------------------------

def normalise(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int


def words_of(text: str) -> list[Word]:
    return [Word(m.group(0), m.start(), m.end()) for m in _WORD.finditer(normalise(text))]


def _tuples(phrases: Iterable[str]) -> list[tuple[str, ...]]:
    out = {tuple(w.text for w in words_of(p)) for p in phrases}
    return sorted((t for t in out if t), key=len, reverse=True)  # longest first


_PRE, _POST, _PSEUDO, _HARD, _SOFT = (_tuples(x) for x in (PRE_NEGATION, POST_NEGATION, PSEUDO_NEGATION,
                                                           HARD_WORDS, SOFT_WORDS))
_SPECIAL = frozenset(w for group in (_PRE, _POST, _HARD, _SOFT) for t in group for w in t)


def protected_phrases(phrases: Iterable[str]) -> list[tuple[str, ...]]:
    """Word tuples of the phrases that contain a negation or separator word, longest first."""
    return [t for t in _tuples(phrases) if len(t) > 1 and any(w in _SPECIAL for w in t)] + _PSEUDO


def _match_at(words: Sequence[str], i: int, options: list[tuple[str, ...]]) -> int:
    """Length of the longest option starting at words[i] (0: none)."""
    for t in options:
        if tuple(words[i:i + len(t)]) == t:
            return len(t)
    return 0


@dataclass(frozen=True)
class Chunk:
    """A stretch of the text to match: `text` (fillers stripped) spans characters [start, end)."""

    start: int
    end: int
    text: str
    negated: bool
    words: tuple[str, ...]  # its words after stripping


def split_chunks(text: str, protected: Sequence[tuple[str, ...]] = ()) -> list[Chunk]:
    """Chunks of `text` with their negation (steps 1-4 of the module docstring)."""
    words = words_of(text)
    tokens = [w.text for w in words]
    n = len(words)
    guarded = [False] * n
    i = 0
    while i < n:  # protected phrases, longest match first, left to right
        k = _match_at(tokens, i, list(protected)) if protected else 0
        k = k or _match_at(tokens, i, _PSEUDO)
        for j in range(i, i + k):
            guarded[j] = True
        i += max(k, 1)

    chunks: list[Chunk] = []
    current: list[int] = []
    negated = False  # the chunk being built is negated
    scope = False  # a negation scope is open (carries over soft boundaries)
    fresh = True  # the chunk being built has no word yet: a clause starter there closes the scope

    def close(keep_scope: bool) -> None:
        nonlocal current, negated, scope, fresh
        chunk = _make_chunk(text, words, current, negated, guarded)
        if chunk is not None:
            chunks.append(chunk)
        current = []
        scope = scope and keep_scope
        negated = scope
        fresh = True

    i = 0
    while i < n:
        if i > 0:
            gap = text[words[i - 1].end:words[i].start]
            if _HARD_GAP.search(gap):
                close(keep_scope=False)
            elif _SOFT_GAP.search(gap):
                close(keep_scope=True)
        if guarded[i]:
            if fresh and scope and tokens[i] in CLAUSE_STARTERS:
                scope = negated = False
            current.append(i)
            fresh = False
            i += 1
            continue
        k = _match_at(tokens, i, _HARD)
        if k:
            close(keep_scope=False)
            i += k
            continue
        k = _match_at(tokens, i, _POST)
        if k and _at_boundary(text, words, tokens, i + k):
            negated = True  # "my cough is gone": negates what came before, in this chunk only
            close(keep_scope=False)
            i += k
            continue
        k = _match_at(tokens, i, _PRE)
        if k:
            if current:
                close(keep_scope=False)
            negated = scope = True
            fresh = True
            i += k
            continue
        k = _match_at(tokens, i, _SOFT)
        if k:
            close(keep_scope=True)
            i += k
            continue
        if fresh and scope and tokens[i] in CLAUSE_STARTERS:
            scope = negated = False
        current.append(i)
        fresh = False
        i += 1
    close(keep_scope=False)
    return chunks


def _at_boundary(text: str, words: Sequence[Word], tokens: Sequence[str], i: int) -> bool:
    """Whether a chunk ends before words[i]: the text's end, punctuation, or a separator word."""
    if i >= len(words):
        return True
    gap = text[words[i - 1].end:words[i].start]
    return bool(_HARD_GAP.search(gap) or _SOFT_GAP.search(gap) or _match_at(tokens, i, _HARD)
                or _match_at(tokens, i, _SOFT))


def _make_chunk(text: str, words: Sequence[Word], idx: list[int], negated: bool,
                guarded: Sequence[bool]) -> Chunk | None:
    lo, hi = 0, len(idx)
    while lo < hi and not guarded[idx[lo]] and words[idx[lo]].text in LEAD_FILLERS:
        lo += 1
    while hi > lo and not guarded[idx[hi - 1]] and words[idx[hi - 1]].text in TRAIL_FILLERS:
        hi -= 1
    kept = idx[lo:hi]
    if not kept or all(words[j].text in STOPWORDS and not guarded[j] for j in kept):
        return None
    start, end = words[kept[0]].start, words[kept[-1]].end
    return Chunk(start=start, end=end, text=normalise(text[start:end]), negated=negated,
                 words=tuple(words[j].text for j in kept))


# ---- matching ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextFinding:
    symptom_index: int  # into PhraseTable.symptom_ids
    symptom_id: str
    name: str
    present: bool
    confidence: float  # cosine similarity of the best-matching table phrase, in [-1, 1]
    start: int  # characters [start, end) of the text that said it
    end: int
    phrase: str  # the table phrase it matched


@dataclass(frozen=True)
class TextUnderstanding:
    findings: list[TextFinding]
    not_understood: list[tuple[int, int]]  # character spans no symptom matched


@dataclass(frozen=True)
class _Candidate:
    text: int  # which input text
    chunk: Chunk
    start: int
    end: int
    phrase: str


def _windows(chunk: Chunk, text: str) -> list[tuple[int, int, str]]:
    """(start, end, phrase) word windows of a chunk that start and end on a content word."""
    ws = [w for w in words_of(text) if chunk.start <= w.start and w.end <= chunk.end]
    out = []
    for i in range(len(ws)):
        if ws[i].text in STOPWORDS:
            continue
        for j in range(i, min(len(ws), i + MAX_WINDOW_WORDS)):
            if ws[j].text in STOPWORDS:
                continue
            out.append((ws[i].start, ws[j].end, normalise(text[ws[i].start:ws[j].end])))
    return out


def _best(embeddings: np.ndarray, table: PhraseTable) -> tuple[np.ndarray, np.ndarray]:
    """(N,) best table phrase index and (N,) its cosine, for query embeddings (N, E)."""
    if not len(embeddings):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    sims = embeddings.astype(np.float32) @ table.embeddings.T  # (N, P)
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(best)), best]


def understand(texts: Sequence[str], encode: Encoder, table: PhraseTable, threshold: float) -> list[TextUnderstanding]:
    """Findings and not-understood spans for each text; two encoder calls for the whole batch at most."""
    chunked = [split_chunks(t, table.protected) for t in texts]
    first = [_Candidate(ti, c, c.start, c.end, c.text) for ti, cs in enumerate(chunked) for c in cs]
    emb = encode([c.phrase for c in first]) if first else np.zeros((0, table.embeddings.shape[1]), np.float32)
    best, score = _best(emb, table)
    found: list[list[TextFinding]] = [[] for _ in texts]
    missed: list[_Candidate] = []
    for cand, b, s in zip(first, best.tolist(), score.tolist(), strict=True):
        if s >= threshold:
            found[cand.text].append(_finding(cand, b, s, table))
        else:
            missed.append(cand)

    retry = [(m, w) for m in missed if len(m.chunk.words) > 1 for w in _windows(m.chunk, texts[m.text])]
    w_emb = encode([w[2] for _, w in retry]) if retry else np.zeros((0, table.embeddings.shape[1]), np.float32)
    w_best, w_score = _best(w_emb, table)
    unmatched: list[list[tuple[int, int]]] = [[] for _ in texts]
    for m in missed:
        options = sorted(((float(s), int(b), w) for (mm, w), b, s in zip(retry, w_best.tolist(), w_score.tolist(),
                                                                          strict=True)
                          if mm is m and s >= threshold), key=lambda o: -o[0])
        taken: list[tuple[int, int]] = []
        for s, b, (start, end, phrase) in options:
            if all(end <= a or start >= z for a, z in taken):
                taken.append((start, end))
                found[m.text].append(_finding(_Candidate(m.text, m.chunk, start, end, phrase), b, s, table))
        if not taken:
            unmatched[m.text].append((m.start, m.end))
    return [TextUnderstanding(findings=_dedupe(f), not_understood=sorted(u)) for f, u in zip(found, unmatched,
                                                                                               strict=True)]


def _finding(c: _Candidate, phrase_index: int, score: float, table: PhraseTable) -> TextFinding:
    s = int(table.symptom[phrase_index])
    return TextFinding(symptom_index=s, symptom_id=table.symptom_ids[s], name=table.symptom_names[s],
                       present=not c.chunk.negated, confidence=float(score), start=c.start, end=c.end,
                       phrase=table.phrases[phrase_index])


def _dedupe(findings: list[TextFinding]) -> list[TextFinding]:
    """One finding per symptom (its most confident mention), in text order."""
    best: dict[int, TextFinding] = {}
    for f in findings:
        if f.symptom_index not in best or f.confidence > best[f.symptom_index].confidence:
            best[f.symptom_index] = f
    return sorted(best.values(), key=lambda f: (f.start, f.symptom_index))
