"""Beam search and greedy decoding in numpy over a decoder-step function (no torch).

The serving path runs it on ONNX Runtime engines, training's evaluation on the torch model: both hand
over a step `(tokens (R,) int64, state) -> (log_probs (R, V), new state)`, where R is the number of live
hypotheses and `state` is an array, or a tuple/list/dict of arrays, whose leading axis is R (the
decoder's hidden state plus, typically, each row's image memory).

`BeamSearch` is the search as a state machine — `inputs()` gives the next step's rows, `advance()`
takes their results — so a server can await a batched engine between steps; `beam_search()` drives it
with a plain function. Greedy decoding is beam search with one beam.

`SearchOptions.end_after_ids` lets a caption end only after a word that ends enough training captions
(`models/caption_text.py` `caption_end_ids`): a decoder that meets an image unlike its training data
otherwise stops after "a" or "of" when its next word would be unknown.

Scores follow GNMT (Wu et al. 2016, eq. 14): a hypothesis of n tokens (EOS included) with total
log-probability lp scores lp / ((5 + n) / 6) ** length_penalty; 0 ranks by raw log-probability,
larger values favour longer captions. A beam stops once it holds `beam_size` finished hypotheses
(or after `max_length` tokens, when its unfinished ones are returned too).

    hyps = beam_search(step, state, bos_id=1, eos_id=2, options=SearchOptions(beam_size=3, n_best=3))
    hyps[0][0].tokens, hyps[0][0].score   # best caption of image 0 (no BOS/EOS), its score
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

State = Any  # np.ndarray, or a tuple/list/dict of them, leading axis = rows
StepFn = Callable[[np.ndarray, State], tuple[np.ndarray, State]]


@dataclass(frozen=True)
class SearchOptions:
    beam_size: int = 3  # hypotheses kept per image; 1 = greedy
    max_length: int = 32  # most tokens generated per caption, EOS included
    n_best: int = 1  # hypotheses returned per image (<= beam_size)
    length_penalty: float = 0.0  # GNMT alpha; 0 = raw log-probability
    banned_ids: tuple[int, ...] = ()  # never generated (e.g. PAD, BOS, UNK)
    end_after_ids: tuple[int, ...] | None = None  # EOS only right after one of these (None: after any token)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be in [1, beam_size={self.beam_size}], got {self.n_best}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated ids without BOS and EOS
    log_prob: float  # sum of the step log-probabilities (EOS included when finished)
    score: float  # log_prob after the length penalty: what the beam ranks by
    finished: bool  # ended with EOS (False: cut at max_length)


def take_rows(state: State, rows: np.ndarray) -> State:
    """`state` with its leading axis indexed by `rows` (reorders and duplicates beams)."""
    if isinstance(state, np.ndarray):
        return state[rows]
    if isinstance(state, tuple | list):
        return type(state)(take_rows(s, rows) for s in state)
    if isinstance(state, dict):
        return {k: take_rows(v, rows) for k, v in state.items()}
    raise TypeError(f"decoder state must be arrays (or a tuple/list/dict of them), got {type(state).__name__}")


@dataclass
class _Beam:
    live: list[tuple[list[int], float]] = field(default_factory=list)  # (tokens, log_prob) per row
    finished: list[Hypothesis] = field(default_factory=list)
    done: bool = False


class BeamSearch:
    """Beam search over `n_images` images; rows of every unfinished image are stepped together."""

    def __init__(self, state: State, n_images: int, bos_id: int, eos_id: int, options: SearchOptions):
        self.opts = options
        self.eos_id = eos_id
        self._beams = [_Beam(live=[([], 0.0)]) for _ in range(n_images)]
        self._tokens = np.full(n_images, bos_id, dtype=np.int64)  # next step's input, one per live row
        self._state = state
        self._row_image = np.arange(n_images)  # which image each live row belongs to
        self._row_log_prob = np.zeros(n_images)  # each live row's log-probability so far
        self._steps = 0
        ends = options.end_after_ids
        self._end_after = None if ends is None else np.asarray(ends, dtype=np.int64)

    @property
    def done(self) -> bool:
        return all(b.done for b in self._beams)

    def inputs(self) -> tuple[np.ndarray, State]:
        """Tokens (R,) and state (R, ...) of the live rows, for the next step."""
        return self._tokens, self._state

    def _score(self, log_prob: float, length: int) -> float:
        return log_prob / ((5.0 + length) / 6.0) ** self.opts.length_penalty

    def advance(self, log_probs: np.ndarray, state: State) -> None:
        """Take the step's log-probs (R, V) and new state for the rows `inputs()` gave."""
        k = self.opts.beam_size
        self._steps += 1
        at_limit = self._steps >= self.opts.max_length
        scores = log_probs.astype(np.float64, copy=True)  # (R, V) -> running totals per candidate
        if self.opts.banned_ids:
            scores[:, list(self.opts.banned_ids)] = -np.inf
        if self._end_after is not None:  # a caption may not end on "a", "of", ... (nor be empty: BOS)
            scores[~np.isin(self._tokens, self._end_after), self.eos_id] = -np.inf
        scores += self._row_log_prob[:, None]
        vocab = scores.shape[1]
        next_rows: list[int] = []
        next_tokens: list[int] = []
        next_log_probs: list[float] = []
        for image in dict.fromkeys(self._row_image.tolist()):  # images in row order
            beam = self._beams[image]
            rows = np.flatnonzero(self._row_image == image)
            flat = scores[rows].ravel()
            n_cand = min(2 * k, flat.size)  # 2k candidates leave k live ones even if k of them end
            top = np.argpartition(-flat, n_cand - 1)[:n_cand]
            top = top[np.argsort(-flat[top], kind="stable")]
            live: list[tuple[list[int], float]] = []
            sources: list[int] = []
            for rank, idx in enumerate(top.tolist()):
                log_prob = float(flat[idx])
                if log_prob == -np.inf:
                    break
                local_row, token = divmod(idx, vocab)
                prefix = beam.live[local_row][0]
                if token == self.eos_id:
                    if rank < k:  # an EOS outside the top k would not have survived the beam
                        score = self._score(log_prob, len(prefix) + 1)
                        beam.finished.append(Hypothesis(prefix, log_prob, score, True))
                    continue
                live.append(([*prefix, token], log_prob))
                sources.append(int(rows[local_row]))
                if len(live) == k:
                    break
            if at_limit:
                beam.finished += [Hypothesis(t, lp, self._score(lp, len(t)), False) for t, lp in live]
            if at_limit or not live or len(beam.finished) >= k:
                beam.live, beam.done = [], True
                continue
            beam.live = live
            next_rows += sources
            next_tokens += [t[-1] for t, _ in live]
            next_log_probs += [lp for _, lp in live]
        index = np.array(next_rows, dtype=np.int64)
        self._tokens = np.array(next_tokens, dtype=np.int64)
        self._row_image = self._row_image[index]
        self._row_log_prob = np.array(next_log_probs, dtype=np.float64)
        self._state = take_rows(state, index)

    def results(self) -> list[list[Hypothesis]]:
        """Per image, its `n_best` hypotheses, best first."""
        out = []
        for beam in self._beams:
            ranked = sorted(beam.finished, key=lambda h: h.score, reverse=True)
            out.append(ranked[: self.opts.n_best])
        return out


def beam_search(step: StepFn, state: State, n_images: int, bos_id: int, eos_id: int,
                options: SearchOptions) -> list[list[Hypothesis]]:
    """Run the search to the end with a synchronous `step`; per image, its n-best hypotheses."""
    search = BeamSearch(state, n_images, bos_id, eos_id, options)
    while not search.done:
        tokens, rows = search.inputs()
        search.advance(*step(tokens, rows))
    return search.results()


def greedy_search(step: StepFn, state: State, n_images: int, bos_id: int, eos_id: int, max_length: int,
                  banned_ids: Sequence[int] = ()) -> list[Hypothesis]:
    """The most likely token at every step (beam search with one beam); one hypothesis per image."""
    opts = SearchOptions(beam_size=1, max_length=max_length, n_best=1, banned_ids=tuple(banned_ids))
    return [hyps[0] for hyps in beam_search(step, state, n_images, bos_id, eos_id, opts)]
