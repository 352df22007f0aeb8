"""Beam + LM decoding in worker processes (`nui serve --decode-workers N`, default: one per CPU core, at most 4).

pyctcdecode's beam search is Python, and kenlm's scorer holds the GIL while it scores, so LM decodes in
threads run one at a time. They also take the GIL from the event loop, the gRPC threads and the batcher
that feeds the engine. In the server they used to run one after another inside the batch function. A
`PooledLMDecoder` runs them in worker processes, each holding the version's LM, so the utterances of a
batch (and the finals of concurrent streams) decode in parallel on every core:

    spec = lm_spec(version_dir, manifest)               # server/speech_ctc.py: checked against the manifest
    decoder = PooledLMDecoder(spec, workers=2)          # spawns the workers; each loads the LM once
    futures = [decoder.submit(rows, 0.03, words=True, max_alternatives=1) for rows in utterances]
    hyps = [f.result() for f in futures]                # concurrently; `decode` is submit + result
    decoder.close()

Workers are spawned (not forked: the server has gRPC threads), so each starts a fresh interpreter and
loads the LM; that start-up is paid at load time (`warm_up`), before the version is served. A worker that
dies fails only the decodes it held (BrokenProcessPool, a RuntimeError); the pool is started afresh for the
next ones.
Only log-prob arrays and hypotheses cross the process boundary; each worker reads the LM files itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from models.ctc_text import VOCAB
from server.speech_ctc import BeamLMDecoder, Hypothesis, LMSpec, build_lm_decoder

logger = logging.getLogger(__name__)

_worker_decoder: BeamLMDecoder | None = None  # in each worker process


def _init_worker(spec: LMSpec) -> None:
    global _worker_decoder
    _worker_decoder = build_lm_decoder(spec)


def _decode(log_probs: np.ndarray, frame_s: float, words: bool, max_alternatives: int,
            context: tuple[str, ...]) -> list[Hypothesis]:
    if _worker_decoder is None:  # the initializer failed: the pool reports it as broken before this
        raise RuntimeError("the decode worker has no language model")
    return _worker_decoder.decode(log_probs, frame_s, words=words, max_alternatives=max_alternatives,
                                  context=context)


class PooledLMDecoder:
    """`CTCDecoder` whose beam + LM decodes run in `workers` spawned processes."""

    def __init__(self, spec: LMSpec, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"decode workers must be >= 1, got {workers}")
        self.spec, self.workers = spec, workers
        self._lock = threading.Lock()
        self._closed = False
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.spec,))

    def submit(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> Future[list[Hypothesis]]:
        """The decode, running in a worker. A future that fails with BrokenProcessPool (a RuntimeError)
        restarts the pool."""
        with self._lock:
            pool = self._pool
        try:
            future = pool.submit(_decode, np.ascontiguousarray(log_probs), frame_s, words, max_alternatives,
                                 tuple(context))
        except BrokenProcessPool:
            self._restart(pool)
            raise
        future.add_done_callback(lambda f: self._restart(pool) if _broken(f) else None)
        return future

    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> list[Hypothesis]:
        return self.submit(log_probs, frame_s, words=words, max_alternatives=max_alternatives,
                           context=context).result()

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if broken is not self._pool or self._closed:
                return  # restarted by another decode already, or closing
            logger.warning("a decode worker of %s died; starting the pool again", self.spec.arpa)
            self._pool = self._start()
        broken.shutdown(wait=False, cancel_futures=True)

    def warm_up(self, timeout_s: float = 60.0) -> None:
        """Start every worker and load its LM now (one tiny decode each, submitted together so each goes
        to its own new worker); ValueError when they cannot load it."""
        rows = np.full((2, len(VOCAB)), -10.0, dtype=np.float32)
        rows[:, 0] = 0.0  # blank
        futures = [self.submit(rows, 0.03, words=False, max_alternatives=1) for _ in range(self.workers)]
        try:
            for f in concurrent.futures.as_completed(futures, timeout=timeout_s):
                f.result()
        except (RuntimeError, OSError, TimeoutError) as e:  # BrokenProcessPool is a RuntimeError
            self.close()
            raise ValueError(f"{self.spec.arpa}: the decode workers could not start: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)


def _broken(future: Future[list[Hypothesis]]) -> bool:
    return not future.cancelled() and isinstance(future.exception(), BrokenProcessPool)
