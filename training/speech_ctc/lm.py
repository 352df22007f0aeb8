"""Word n-gram language model for CTC beam search: estimation and ARPA output.

Owns the LM that `models.ctc_beam.CTCBeamDecoder` fuses with the acoustic model. The pip `kenlm`
package only queries models (KenLM's estimator `lmplz` is a separate C++ binary), so estimation lives
here: interpolated modified Kneser-Ney smoothing (Chen & Goodman 1998, "An Empirical Study of Smoothing
Techniques for Language Modeling", TR-10-98, §3), with the count adjustments and unigram
interpolation of KenLM's lmplz (Heafield et al. 2013, "Scalable Modified Kneser-Ney Language Model
Estimation", §2). The result is an ARPA file that `kenlm.Model` and pyctcdecode load.

    python -m training.speech_ctc.lm --text data/lm_text.txt --order 3 --out runs/lm \
        [--dev-text data/dev_text.txt] [--prune-singletons]

writes runs/lm/lm.arpa, runs/lm/unigrams.txt (the word list pyctcdecode builds its prefix trie from)
and runs/lm/lm.json (order, n-gram counts, discounts, dev perplexity).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kenlm
from tqdm import tqdm

from models.ctc_text import normalize_text

logger = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_BOS_ID, _EOS_ID, _UNK_ID = 0, 1, 2
# lmplz's --discount_fallback values, used for an order whose count-of-counts cannot give valid
# discounts (tiny corpora: no n-gram seen exactly twice, ...).
FALLBACK_DISCOUNTS: tuple[float, float, float] = (0.5, 1.0, 1.5)
# ARPA/KenLM convention for "never predicted" (<s>): log10 p = -99.
_LOG10_ZERO = -99.0
_MIN_MASS = 1e-12

NGram = tuple[int, ...]


@dataclass(frozen=True)
class NGramLM:
    """An estimated backoff model. Index n-1 of each list holds the n-grams of order n.

    words: id -> word; ids 0, 1, 2 are <s>, </s>, <unk>.
    log10_probs: n-gram (word ids) -> log10 p(w_n | w_1^{n-1}) (interpolated, as ARPA stores it).
    log10_backoffs: context n-gram -> log10 backoff weight, for n < order.
    discounts: per order, (D1, D2, D3+).
    """

    order: int
    words: tuple[str, ...]
    log10_probs: tuple[dict[NGram, float], ...]
    log10_backoffs: tuple[dict[NGram, float], ...]
    discounts: tuple[tuple[float, float, float], ...]
    num_sentences: int
    num_tokens: int

    def vocabulary(self) -> list[str]:
        """The real words (no <s>, </s>, <unk>) in first-seen order: pyctcdecode's unigram list."""
        return list(self.words[3:])

    def write_arpa(self, path: Path) -> None:
        """Write the model in ARPA format (one section per order; backoffs only where they are set)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n, probs in enumerate(self.log10_probs, start=1):
                f.write(f"ngram {n}={len(probs)}\n")
            for n, probs in enumerate(self.log10_probs, start=1):
                backoffs = self.log10_backoffs[n - 1] if n < self.order else {}
                f.write(f"\n\\{n}-grams:\n")
                lines = []
                # Unigrams in id order (<s>, </s>, <unk>, then first-seen words) for a readable file.
                items = sorted(probs.items()) if n == 1 else probs.items()
                for gram, logp in items:
                    text = " ".join(self.words[i] for i in gram)
                    bo = backoffs.get(gram)
                    lines.append(f"{logp:.6f}\t{text}" if bo is None else f"{logp:.6f}\t{text}\t{bo:.6f}")
                f.write("\n".join(lines))
                f.write("\n")
            f.write("\n\\end\\\n")

    def summary(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "sentences": self.num_sentences,
            "tokens": self.num_tokens,
            "vocabulary": len(self.words) - 3,
            "ngrams": {str(n): len(p) for n, p in enumerate(self.log10_probs, start=1)},
            "discounts": {str(n): list(d) for n, d in enumerate(self.discounts, start=1)},
        }


def count_ngrams(sentences: Iterable[str], order: int) -> tuple[list[str], list[Counter[NGram]], int, int]:
    """Raw counts of all n-grams, n = 1..order, over sentences padded as "<s> w1 .. wk </s>".

    Returns (id -> word, counts per order, number of sentences, number of word tokens). Empty lines are
    skipped. The literal token "<unk>" counts as the unknown word, as in lmplz.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    words = [BOS, EOS, UNK]
    word_ids = {w: i for i, w in enumerate(words)}
    counts: list[Counter[NGram]] = [Counter() for _ in range(order)]
    num_sentences = num_tokens = 0
    for sentence in sentences:
        tokens = sentence.split()
        if not tokens:
            continue
        if BOS in tokens or EOS in tokens:
            raise ValueError(f"sentence {num_sentences + 1} contains {BOS} or {EOS}: {sentence[:80]!r}")
        ids = [_BOS_ID]
        for w in tokens:
            i = word_ids.get(w)
            if i is None:
                i = word_ids[w] = len(words)
                words.append(w)
            ids.append(i)
        ids.append(_EOS_ID)
        for n in range(1, order + 1):
            counts[n - 1].update(zip(*(ids[k:] for k in range(n)), strict=False))
        num_sentences += 1
        num_tokens += len(tokens)
    return words, counts, num_sentences, num_tokens


def _adjusted_counts(counts: list[Counter[NGram]]) -> list[dict[NGram, int]]:
    """Kneser-Ney adjusted counts (Heafield et al. 2013, §2; Chen & Goodman 1998, §3).

    a(w_1^n) = c(w_1^n) for the highest order and for n-grams starting with <s> (nothing can precede
    <s>, so it has no left context to count); otherwise a(w_1^n) = N1+(. w_1^n), the number of distinct
    words seen immediately before w_1^n. Every n-gram not starting with <s> has a predecessor in its
    padded sentence, so every seen n-gram gets a positive adjusted count.
    """
    order = len(counts)
    adjusted: list[dict[NGram, int]] = [{} for _ in range(order)]
    adjusted[-1] = dict(counts[-1])
    for n in range(order - 1, 0, -1):
        adj: dict[NGram, int] = {}
        for gram in counts[n]:  # the (n+1)-grams
            suffix = gram[1:]
            adj[suffix] = adj.get(suffix, 0) + 1
        for gram, c in counts[n - 1].items():
            if gram[0] == _BOS_ID:
                adj[gram] = c
        adjusted[n - 1] = adj
    return adjusted


def _discounts(adjusted: dict[NGram, int], n: int) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts of one order (Chen & Goodman 1998, §3; Heafield et al. 2013, §2).

    With t_k the number of n-grams whose adjusted count is exactly k and Y = t_1 / (t_1 + 2 t_2):
    D_k = k - (k + 1) Y t_{k+1} / t_k for k = 1, 2, and D_3+ uses k = 3. An order whose count-of-counts
    give an undefined or out-of-range discount falls back to fixed ones, like lmplz --discount_fallback.
    We also require D_k < k (lmplz accepts D_k = k): t_4 = 0 gives D_3+ = 3, which would wipe out every
    n-gram seen exactly three times.
    """
    t = Counter(c for gram, c in adjusted.items() if c <= 4 and gram != (_BOS_ID,))
    t1, t2, t3, t4 = (t[k] for k in (1, 2, 3, 4))
    if 0 in (t1, t2, t3, t4):
        logger.warning(
            "order %d: count-of-counts t1..t4 = %d, %d, %d, %d contain a zero; using fallback discounts %s",
            n, t1, t2, t3, t4, FALLBACK_DISCOUNTS,
        )
        return FALLBACK_DISCOUNTS
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0.0 < dk < k for k, dk in enumerate(d, start=1)):
        logger.warning("order %d: discounts %s out of range; using fallback %s", n, d, FALLBACK_DISCOUNTS)
        return FALLBACK_DISCOUNTS
    return d


def estimate(
    sentences: Iterable[str], order: int = 3, prune_singletons: bool = False
) -> NGramLM:
    """Interpolated modified Kneser-Ney estimate of a word n-gram model.

    For a context h = w_1^{n-1} and its suffix h' = w_2^{n-1} (Heafield et al. 2013, §2, after Chen &
    Goodman 1998, §3):
        u(w | h) = (a(h w) - D_n(a(h w))) / sum_x a(h x)
        b(h)     = (D_n(1) N_1(h .) + D_n(2) N_2(h .) + D_n(3+) N_3+(h .)) / sum_x a(h x)
        p(w | h) = u(w | h) + b(h) p(w | h')
    with N_k(h .) the number of words x with a(h x) = k (k >= 3 for N_3+), and the unigrams interpolated
    with the uniform distribution over the predictable vocabulary (all words, </s> and <unk>; not <s>):
    p(w) = u(w) + b() / |V|. <unk> is never seen, so it gets exactly b() / |V|.

    For a seen h w, u > 0 and ARPA stores p(w | h); for an unseen one u = 0 and p(w | h) = b(h) p(w | h'),
    which is exactly the ARPA backoff rule, so b(h) is the ARPA backoff weight.

    prune_singletons drops n-grams of order >= 3 seen only once. Their discounted mass u moves to the
    backoff, which is then renormalized from the kept n-grams (SRILM's "ngram-discount" backoff formula):
    b'(h) = (1 - sum_kept p(w | h)) / (1 - sum_kept p(w | h')). A raw count never exceeds the raw count of
    its prefix or suffix, so a kept n-gram's prefix and suffix are always kept and the ARPA file stays
    consistent.
    """
    if order < 2:
        raise ValueError(f"order must be >= 2 (kenlm loads no unigram-only model), got {order}")
    words, counts, num_sentences, num_tokens = count_ngrams(
        tqdm(sentences, desc="counting n-grams", unit=" sentences", disable=None), order
    )
    if num_sentences == 0:
        raise ValueError("no sentences to estimate a language model from")
    adjusted = _adjusted_counts(counts)
    probs: list[dict[NGram, float]] = []  # linear probabilities while estimating
    backoffs: list[dict[NGram, float]] = []  # b(h) for contexts h of order n - 1
    discounts: list[tuple[float, float, float]] = []
    for n in range(1, order + 1):
        adj = adjusted[n - 1]
        if n == 1:
            adj = {g: a for g, a in adj.items() if g != (_BOS_ID,)}
        d = _discounts(adj, n)
        discounts.append(d)
        d1, d2, d3 = d
        # Per context h: sum_x a(h x) and sum_x D(a(h x)), the numerator of b(h).
        totals: dict[NGram, int] = {}
        masses: dict[NGram, float] = {}
        for gram, a in adj.items():
            h = gram[:-1]
            totals[h] = totals.get(h, 0) + a
            masses[h] = masses.get(h, 0.0) + (d1 if a == 1 else d2 if a == 2 else d3)
        gamma = {h: masses[h] / total for h, total in totals.items()}
        p_n: dict[NGram, float] = {}
        if n == 1:
            total = totals[()]
            vocab_size = len(adj) + (0 if (_UNK_ID,) in adj else 1)
            uniform = gamma[()] / vocab_size
            for gram, a in adj.items():
                p_n[gram] = (a - (d1 if a == 1 else d2 if a == 2 else d3)) / total + uniform
            p_n.setdefault((_UNK_ID,), uniform)
        else:
            lower = probs[-1]
            for gram, a in adj.items():
                h = gram[:-1]
                u = (a - (d1 if a == 1 else d2 if a == 2 else d3)) / totals[h]
                p_n[gram] = u + gamma[h] * lower[gram[1:]]
        probs.append(p_n)
        backoffs.append(gamma)

    if prune_singletons:
        for n in range(3, order + 1):
            _prune(probs, backoffs, counts[n - 1], n)

    log10_probs: list[dict[NGram, float]] = []
    for n, p_n in enumerate(probs, start=1):
        logp = {g: min(0.0, math.log10(p)) for g, p in p_n.items()}
        if n == 1:
            # <s> is a context, never a prediction; it must still be listed as a unigram.
            logp = {(_BOS_ID,): _LOG10_ZERO, **logp}
        log10_probs.append(logp)
    # backoffs[n] holds b(h) for the contexts h of order n (they predict the (n+1)-grams).
    log10_backoffs = tuple(
        {h: math.log10(max(b, _MIN_MASS)) for h, b in backoffs[n].items()} for n in range(1, order)
    )
    return NGramLM(
        order=order,
        words=tuple(words),
        log10_probs=tuple(log10_probs),
        log10_backoffs=log10_backoffs,
        discounts=tuple(discounts),
        num_sentences=num_sentences,
        num_tokens=num_tokens,
    )


def _prune(
    probs: list[dict[NGram, float]], backoffs: list[dict[NGram, float]], raw: Counter[NGram], n: int
) -> None:
    """Drop the order-n n-grams seen once and renormalize the backoffs of their contexts (in place)."""
    p_n, lower = probs[n - 1], probs[n - 2]
    pruned_contexts = {g[:-1] for g, c in raw.items() if c <= 1}
    if not pruned_contexts:
        return
    kept_sums: dict[NGram, list[float]] = {h: [0.0, 0.0] for h in pruned_contexts}
    for gram in list(p_n):
        h = gram[:-1]
        if h not in kept_sums:
            continue
        if raw[gram] <= 1:
            del p_n[gram]
        else:
            kept_sums[h][0] += p_n[gram]
            kept_sums[h][1] += lower[gram[1:]]
    b_n = backoffs[n - 1]
    for h, (p_kept, lower_kept) in kept_sums.items():
        b_n[h] = max(1.0 - p_kept, _MIN_MASS) / max(1.0 - lower_kept, _MIN_MASS)
    logger.info("order %d: pruned singletons, %d n-grams left", n, len(p_n))


def perplexity(arpa_path: Path, sentences: Iterable[str]) -> dict[str, float]:
    """Perplexity of kenlm's reading of an ARPA file, per token including </s>; OOVs are scored as <unk>."""
    model = kenlm.Model(str(arpa_path))
    total_log10 = 0.0
    num_sentences = num_words = num_oov = 0
    for sentence in sentences:
        words = sentence.split()
        if not words:
            continue
        for log10_p, _, oov in model.full_scores(" ".join(words), bos=True, eos=True):
            total_log10 += log10_p
            num_oov += int(oov)
        num_sentences += 1
        num_words += len(words)
    if num_sentences == 0:
        raise ValueError("no sentences to compute perplexity on")
    return {
        "sentences": num_sentences,
        "words": num_words,
        "oov_rate": num_oov / num_words,
        "perplexity": 10.0 ** (-total_log10 / (num_words + num_sentences)),
    }


def _read_normalized(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        lines = [normalize_text(line) for line in f]
    return [line for line in lines if line]


def build(
    text_path: Path, out_dir: Path, order: int = 3, prune_singletons: bool = False,
    dev_text_path: Path | None = None,
) -> dict[str, Any]:
    """Estimate from text_path (one sentence per line, re-normalized with normalize_text so every word is
    spellable by the CTC vocabulary) and write out_dir/{lm.arpa, unigrams.txt, lm.json}. Returns lm.json.
    """
    sentences = _read_normalized(text_path)
    lm = estimate(sentences, order=order, prune_singletons=prune_singletons)
    out_dir.mkdir(parents=True, exist_ok=True)
    arpa_path = out_dir / "lm.arpa"
    lm.write_arpa(arpa_path)
    (out_dir / "unigrams.txt").write_text("".join(f"{w}\n" for w in lm.vocabulary()), encoding="utf-8")
    info: dict[str, Any] = {
        "text": str(text_path),
        "smoothing": "interpolated modified Kneser-Ney",
        "prune_singletons": prune_singletons,
        **lm.summary(),
    }
    if dev_text_path is not None:
        info["dev"] = {"text": str(dev_text_path), **perplexity(arpa_path, _read_normalized(dev_text_path))}
    (out_dir / "lm.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", type=Path, required=True, help="training sentences, one per line")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--dev-text", type=Path, default=None, help="held-out sentences for perplexity")
    parser.add_argument(
        "--prune-singletons", action="store_true", help="drop n-grams of order >= 3 seen only once"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.order < 2:
        parser.error(f"--order must be >= 2 (kenlm loads no unigram-only model), got {args.order}")
    for path in (args.text, args.dev_text):
        if path is not None and not path.is_file():
            parser.error(f"no such file: {path}")
    info = build(args.text, args.out, args.order, args.prune_singletons, args.dev_text)
    logger.info("wrote %s: %s", args.out, json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
