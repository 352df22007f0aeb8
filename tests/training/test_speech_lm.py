"""The word n-gram LM builder: a hand-computed Kneser-Ney value, normalization through kenlm, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import kenlm
import pytest

from training.speech_ctc import lm

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat sat",
    "the cat ate the rat",
    "the dog ate",
    "a dog was sad",
    "the cat sat on the dog",
    "the sad cat sat",
]


def _write_lm(
    tmp_path: Path, sentences: list[str], order: int, prune_singletons: bool = False
) -> tuple[kenlm.Model, list[str]]:
    model = lm.estimate(sentences, order=order, prune_singletons=prune_singletons)
    path = tmp_path / "lm.arpa"
    model.write_arpa(path)
    return kenlm.Model(str(path)), model.vocabulary()


def _prob(model: kenlm.Model, history: list[str], word: str, bos: bool = True) -> float:
    """p(word | history) as kenlm computes it from the ARPA file."""
    state = kenlm.State()
    (model.BeginSentenceWrite if bos else model.NullContextWrite)(state)
    for w in history:
        out = kenlm.State()
        model.BaseScore(state, w, out)
        state = out
    return float(10.0 ** model.BaseScore(state, word, kenlm.State()))


def test_matches_hand_computed_kneser_ney(tmp_path: Path) -> None:
    # Corpus "a b" / "b", order 2; every order falls back to discounts (0.5, 1, 1.5) (no count of 3).
    # Unigram adjusted counts are left-context counts: a 1, b 2 ({<s>, a}), </s> 1 (raw count 2).
    # Sum 4, b() = (0.5*2 + 1*1)/4 = 0.5, uniform over {a, b, </s>, <unk>} = 0.125:
    # p(a) = 0.5/4 + 0.125 = 0.25, p(</s>) = 0.25, p(<unk>) = 0.125.
    # Context <s>: a(<s> a) = a(<s> b) = 1, b(<s>) = 0.5, p(b | <s>) = 0.5/2 + 0.5 * p(b) = 0.4375.
    # Context b: a(b </s>) = 2, b(b) = 0.5, p(</s> | b) = 1/2 + 0.5 * 0.25 = 0.625.
    model, _ = _write_lm(tmp_path, ["a b", "b"], order=2)
    assert _prob(model, [], "a", bos=False) == pytest.approx(0.25, abs=1e-5)
    assert _prob(model, [], "</s>", bos=False) == pytest.approx(0.25, abs=1e-5)
    assert _prob(model, [], "b") == pytest.approx(0.4375, abs=1e-5)
    assert _prob(model, ["b"], "</s>") == pytest.approx(0.625, abs=1e-5)
    # An unseen word is <unk>: b(<s>) * p(<unk>) = 0.0625.
    assert "zebra" not in model
    assert _prob(model, [], "zebra") == pytest.approx(0.0625, abs=1e-5)


@pytest.mark.parametrize(("order", "prune"), [(2, False), (3, False), (4, False), (4, True)])
def test_every_context_sums_to_one(tmp_path: Path, order: int, prune: bool) -> None:
    model, words = _write_lm(tmp_path, CORPUS, order=order, prune_singletons=prune)
    assert model.order == order
    predictable = [*words, "</s>", "<unk>"]
    histories = [[], ["the"], ["sat"], ["the", "cat"], ["cat", "sat", "on"], ["dog", "was"], ["zebra"],
                 ["the", "zebra"], ["on", "the", "dog"]]
    for history in histories:
        total = sum(_prob(model, history, w) for w in predictable)
        assert total == pytest.approx(1.0, abs=1e-3), history
    total = sum(_prob(model, [], w, bos=False) for w in predictable)
    assert total == pytest.approx(1.0, abs=1e-3)


def test_pruning_drops_singletons_only_at_order_three_and_up() -> None:
    full = lm.estimate(CORPUS, order=3)
    pruned = lm.estimate(CORPUS, order=3, prune_singletons=True)
    assert pruned.log10_probs[:2] == full.log10_probs[:2]
    assert 0 < len(pruned.log10_probs[2]) < len(full.log10_probs[2])
    the_cat_sat = tuple(full.words.index(w) for w in ("the", "cat", "sat"))  # seen three times: kept
    assert the_cat_sat in pruned.log10_probs[2]


def test_cli_writes_arpa_unigrams_and_json_deterministically(tmp_path: Path) -> None:
    text = tmp_path / "lm_text.txt"
    text.write_text("".join(f"{s}\n" for s in CORPUS) + "\nThe CAT sat!\n", encoding="utf-8")
    dev = tmp_path / "dev.txt"
    dev.write_text("the cat sat on the log\nthe zebra sat\n", encoding="utf-8")
    for out in ("a", "b"):
        assert lm.main(["--text", str(text), "--order", "3", "--out", str(tmp_path / out),
                        "--dev-text", str(dev)]) == 0
    arpa = (tmp_path / "a" / "lm.arpa").read_bytes()
    assert arpa == (tmp_path / "b" / "lm.arpa").read_bytes()
    assert kenlm.Model(str(tmp_path / "a" / "lm.arpa")).order == 3
    unigrams = (tmp_path / "a" / "unigrams.txt").read_text(encoding="utf-8").split("\n")
    assert unigrams[:3] == ["the", "cat", "sat"] and unigrams[-1] == ""
    assert not {"<s>", "</s>", "<unk>"} & set(unigrams)
    info = json.loads((tmp_path / "a" / "lm.json").read_text(encoding="utf-8"))
    assert info["order"] == 3 and info["sentences"] == len(CORPUS) + 1  # the blank line is skipped
    assert info["ngrams"]["1"] == len(unigrams) - 1 + 3
    assert info["dev"]["words"] == 9 and info["dev"]["oov_rate"] == pytest.approx(1 / 9)
    assert 1.0 < info["dev"]["perplexity"] < 1000.0 and math.isfinite(info["dev"]["perplexity"])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="order"):
        lm.estimate(CORPUS, order=1)
    with pytest.raises(ValueError, match="no sentences"):
        lm.estimate(["", "  "], order=3)
    with pytest.raises(ValueError, match="<s>"):
        lm.estimate(["the <s> cat"], order=3)
