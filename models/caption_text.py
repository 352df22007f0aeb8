"""The captioner's word vocabulary: caption normalization and a word-level tokenizer (no torch).

Shared bit-for-bit by training (targets, BLEU/CIDEr references) and serving (ids -> text), so it
imports only `tokenizers` and numpy. The tokenizer is a Hugging Face `tokenizers` WordLevel model
saved as one `tokenizer.json`, which any `tokenizers` / `transformers` user can load as is:

    normalizer     NFKD, strip accents, lower-case, "&" -> "and", every character outside
                   [a-z0-9'] -> space, apostrophes kept only inside words ("man's"). Punctuation is
                   dropped here, as COCO's evaluation tokenizer drops it, so it never becomes a token.
    pre-tokenizer  whitespace split (after the normalizer, words are all that is left).
    post-processor "[BOS] $A [EOS]", so `Tokenizer.encode` itself adds BOS/EOS.

Special ids are fixed: [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3; words follow by falling frequency.

    tok = train_tokenizer(captions, min_count=2)
    tok.save("runs/x/tokenizer.json"); tok = CaptionTokenizer.from_file("runs/x/tokenizer.json")
    ids = tok.encode("Two cats on grass.")      # [1, ..., 2]
    tok.decode(ids)                             # "two cats on grass"
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [
            normalizers.NFKD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace("&", " and "),
            normalizers.Replace(Regex(r"[\u2018\u2019`]"), "'"),
            normalizers.Replace(Regex(r"[^a-z0-9' ]+"), " "),
            # Quotes are not apostrophes: keep "'" only between two word characters.
            normalizers.Replace(Regex(r"(?<![a-z0-9])'|'(?![a-z0-9])"), " "),
            normalizers.Replace(Regex(r" {2,}"), " "),
            normalizers.Strip(),
        ]
    )


_NORMALIZER = _normalizer()


def normalize_caption(text: str) -> str:
    """The text the tokenizer sees: "A Café's red BUS, on grass!" -> "a cafe's red bus on grass"."""
    return _NORMALIZER.normalize_str(text)


def _empty_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK]))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def _add_post_processor(tok: Tokenizer) -> None:
    bos, eos = SPECIAL_TOKENS[BOS], SPECIAL_TOKENS[EOS]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, BOS), (eos, EOS)]
    )


class CaptionTokenizer:
    """A word-level `tokenizers.Tokenizer` with the captioner's fixed special ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        for want, name in enumerate(SPECIAL_TOKENS):
            got = tokenizer.token_to_id(name)
            if got != want:
                raise ValueError(f"tokenizer has {name} at id {got}, the captioner needs it at id {want}")
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> CaptionTokenizer:
        """Load a `tokenizer.json` written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption tokenizer not found: {path}")
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, json_text: str) -> CaptionTokenizer:
        return cls(Tokenizer.from_str(json_text))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))

    def to_str(self) -> str:
        return self.tokenizer.to_str(pretty=True)  # byte-identical to the file `save` writes

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(i)

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """[BOS] word ids [EOS]; with max_len, words are cut so the result (EOS kept) fits max_len."""
        ids = self.tokenizer.encode(caption).ids
        if max_len is not None and len(ids) > max_len:
            if max_len < 2:
                raise ValueError(f"max_len must be >= 2 to hold BOS and EOS, got {max_len}")
            ids = [*ids[: max_len - 1], EOS]
        return ids

    def encode_batch(self, captions: Sequence[str], max_len: int) -> np.ndarray:
        """(N, max_len) int64 ids, each row [BOS] ... [EOS] then [PAD]s."""
        out = np.full((len(captions), max_len), PAD, dtype=np.int64)
        for row, caption in enumerate(captions):
            ids = self.encode(caption, max_len)
            out[row, : len(ids)] = ids
        return out

    def caption_end_ids(self, captions: Iterable[str], min_share: float = 0.01) -> tuple[int, ...]:
        """Sorted ids of the words that end at least `min_share` of the captions they occur in (unknown
        words left out): the words after which beam search may end a caption (`models/caption_beam.py`
        `end_after_ids`). The share keeps out the odd plain caption ("The letter a.", "Less than or equal
        to."): on the bundled data every word ends either < 0.1 % or > 5 % of its captions."""
        ends: Counter[int] = Counter()
        seen: Counter[int] = Counter()
        for ids in (self.encode(c) for c in captions):
            words = ids[1:-1]
            if words:
                ends[words[-1]] += 1
                seen.update(set(words))
        return tuple(sorted(i for i, n in ends.items() if i != UNK and n >= min_share * seen[i]))

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Words up to the first EOS; PAD/BOS skipped, so a decoder's raw output decodes as is."""
        words: list[str] = []
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1).tolist():
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            tok = self.tokenizer.id_to_token(int(i))
            if tok is None:
                raise ValueError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
            words.append(tok)
        return " ".join(words)


def train_tokenizer(captions: Iterable[str], min_count: int = 1, max_vocab: int | None = None) -> CaptionTokenizer:
    """Word vocabulary of `captions`: words seen at least `min_count` times (others map to [UNK]).

    max_vocab caps the size (specials included), keeping the most frequent words.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    tok = _empty_tokenizer({})
    trainer = WordLevelTrainer(
        vocab_size=max_vocab if max_vocab is not None else 1 << 30,
        min_frequency=min_count,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    _add_post_processor(tok)
    return CaptionTokenizer(tok)


def manifest_end_ids(extras: dict[str, object], vocab_size: int) -> tuple[int, ...] | None:
    """The words a version's captions may end on (manifest `extras["caption_end_ids"]`, written by
    `nui export captioner --domain-data`); None when the manifest has none (a caption may end anywhere).
    ValueError unless it is a non-empty list of word ids."""
    ends = extras.get("caption_end_ids")
    if ends is None:
        return None
    if not isinstance(ends, list) or not ends or not all(isinstance(i, int) and EOS < i < vocab_size for i in ends):
        raise ValueError("manifest caption_end_ids must be a non-empty list of word ids")
    return tuple(ends)
