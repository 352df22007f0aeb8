"""Beam search and greedy decoding against hand-made step functions whose best captions are known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from models.caption_beam import SearchOptions, beam_search, greedy_search, take_rows

PAD, BOS, EOS = 0, 1, 2
WORDS = (3, 4, 5)
V = 6


def _log_probs(image: int, prefix: tuple[int, ...]) -> np.ndarray:
    """A fixed random distribution over the vocabulary for every (image, prefix)."""
    seed = hash((image, prefix)) % (2**32)
    logits = np.random.default_rng(seed).normal(0, 2, V)
    return logits - np.log(np.exp(logits).sum())


def _prefix_step(tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """State = image id (R,) + the words so far (R, MAX) padded with -1, so log-probs depend on the whole
    prefix: a beam that hands a row the wrong state gets the wrong distribution."""
    prefix = state["prefix"].copy()
    for i, t in enumerate(tokens.tolist()):
        if t != BOS:
            prefix[i, int((prefix[i] >= 0).sum())] = t
    log_probs = np.zeros((len(tokens), V))
    for i, (image, row) in enumerate(zip(state["image"].tolist(), prefix, strict=True)):
        log_probs[i] = _log_probs(image, tuple(row[row >= 0].tolist()))
    return log_probs, {"image": state["image"], "prefix": prefix}


def _brute_force(image: int, max_length: int) -> list[tuple[tuple[int, ...], float]]:
    """Every caption of at most max_length tokens (EOS included) ending in EOS, with its log-prob."""
    out = []
    for n in range(max_length):
        for words in itertools.product(WORDS, repeat=n):
            lp = sum(_log_probs(image, words[:i])[w] for i, w in enumerate(words))
            out.append((words, lp + _log_probs(image, words)[EOS]))
    return sorted(out, key=lambda x: -x[1])


def test_exhaustive_beam_finds_every_caption_in_order() -> None:
    """With a beam wider than the candidates of any step and n_best above the 40 + 81 results, beam search is
    exact: its finished n-best list is the brute-force ranking of all 40 captions, log-probs included,
    for each image of a batch of two."""
    max_length, width = 4, 130
    opts = SearchOptions(beam_size=width, max_length=max_length, n_best=width, banned_ids=(PAD, BOS))
    state = {"image": np.array([0, 1]), "prefix": np.full((2, max_length), -1, dtype=np.int64)}
    results = beam_search(_prefix_step, state, 2, BOS, EOS, opts)
    for image, hyps in enumerate(results):
        expected = _brute_force(image, max_length)
        finished = [h for h in hyps if h.finished]
        assert [tuple(h.tokens) for h in finished] == [w for w, _ in expected]
        assert [h.log_prob for h in finished] == pytest.approx([lp for _, lp in expected], abs=1e-9)
        assert len(finished) == 40 and all(h.score == h.log_prob for h in hyps)  # length_penalty 0
        assert sum(not h.finished for h in hyps) == 81  # 3**4 captions cut at max_length


def test_beam_beats_greedy_on_a_trap() -> None:
    """BOS -> "a" (0.6) then a flat distribution, or "b" (0.4) then EOS for sure: greedy takes "a" and
    ends with 0.6 * 0.25 = 0.15; a beam of two finds "b" at 0.4."""
    a, b = 3, 4
    table = {(): {a: 0.6, b: 0.4}, (a,): {EOS: 0.25, 3: 0.25, 4: 0.25, 5: 0.25}, (b,): {EOS: 1.0}}

    state = np.zeros((1, 1), dtype=np.int64)  # the first word (0 = none yet)

    def step_first_word(tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(tokens), V), -np.inf)
        first = state[:, 0].copy()
        for i, t in enumerate(tokens.tolist()):
            if t == BOS:
                dist = table[()]
            else:
                first[i] = first[i] or t
                dist = table[(int(first[i]),)] if t == first[i] and first[i] else {EOS: 1.0}
            for w, p in dist.items():
                out[i, w] = math.log(p)
        return out, first[:, None]

    greedy = greedy_search(step_first_word, state, 1, BOS, EOS, max_length=2)[0]
    beam = beam_search(step_first_word, state, 1, BOS, EOS, SearchOptions(beam_size=2, max_length=5, n_best=2))[0]
    assert greedy.tokens == [a] and greedy.log_prob == pytest.approx(math.log(0.15))
    assert beam[0].tokens == [b] and beam[0].log_prob == pytest.approx(math.log(0.4))
    assert beam[1].log_prob <= beam[0].log_prob


def test_greedy_is_argmax_and_stops_at_max_length() -> None:
    """Greedy equals a hand-written argmax loop, and a caption that never ends is cut, unfinished."""
    def step(tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp = np.log(np.full((len(tokens), V), 0.1))
        lp[:, 3 + (state[:, 0] % 3)] = np.log(0.5)  # cycles through the three words, never EOS
        return lp, state + 1

    hyp = greedy_search(step, np.zeros((1, 1), dtype=np.int64), 1, BOS, EOS, max_length=5)[0]
    assert hyp.tokens == [3, 4, 5, 3, 4] and not hyp.finished
    assert hyp.log_prob == pytest.approx(5 * math.log(0.5))


def test_length_penalty_prefers_longer_captions() -> None:
    """Short caption log-prob -1.0 (1 token), long one -1.2 (4 tokens): raw score picks the short one,
    GNMT alpha=1 divides by (5+n)/6 -> -1.0 vs -0.8 and picks the long one."""
    def step(tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(tokens), V), -50.0)
        for i, n in enumerate(state[:, 0].tolist()):
            if n == 0:
                out[i, EOS], out[i, 3] = -1.0, -0.3
            else:
                out[i, EOS if n == 3 else 3] = -0.3
        return out, state + 1

    state = np.zeros((1, 1), dtype=np.int64)
    raw = beam_search(step, state, 1, BOS, EOS, SearchOptions(beam_size=2, max_length=6))[0][0]
    long = beam_search(step, state, 1, BOS, EOS, SearchOptions(beam_size=2, max_length=6, length_penalty=1.0))[0][0]
    assert raw.tokens == [] and raw.score == pytest.approx(-1.0)
    assert long.tokens == [3, 3, 3] and long.log_prob == pytest.approx(-1.2)
    assert long.score == pytest.approx(-1.2 / (9 / 6))


def test_take_rows_and_option_validation() -> None:
    state = (np.arange(3), {"h": np.arange(6).reshape(3, 2)})
    picked = take_rows(state, np.array([2, 2, 0]))
    assert picked[0].tolist() == [2, 2, 0] and picked[1]["h"].tolist() == [[4, 5], [4, 5], [0, 1]]
    with pytest.raises(TypeError):
        take_rows("nope", np.array([0]))
    for bad in ({"beam_size": 0}, {"max_length": 0}, {"n_best": 4, "beam_size": 3}, {"length_penalty": -1}):
        with pytest.raises(ValueError):
            SearchOptions(**bad)  # type: ignore[arg-type]


def test_captions_end_only_after_allowed_words() -> None:
    """EOS is the likeliest token after every word, yet with `end_after_ids` = {4} a caption can only end
    right after word 4: not after BOS (empty), not after word 3."""
    def step(tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp = np.full((len(tokens), V), np.log(0.1 / (V - 1)))
        lp[:, EOS] = np.log(0.9)
        lp[:, 3], lp[:, 4] = np.log(0.06), np.log(0.03)
        return lp, state

    state = np.zeros((1, 1))
    free = beam_search(step, state, 1, BOS, EOS, SearchOptions(beam_size=2, max_length=4, banned_ids=(PAD, BOS)))
    assert free[0][0].tokens == [] and free[0][0].finished  # unconstrained: the empty caption wins
    opts = SearchOptions(beam_size=2, max_length=4, n_best=2, banned_ids=(PAD, BOS), end_after_ids=(4,))
    hyps = beam_search(step, state, 1, BOS, EOS, opts)[0]
    assert all(h.finished and h.tokens[-1] == 4 for h in hyps)
    assert hyps[0].tokens == [4]
    greedy = greedy_search(step, state, 1, BOS, EOS, max_length=3, banned_ids=(PAD, BOS))
    assert greedy[0].tokens == []  # greedy search takes no end words: the empty caption
