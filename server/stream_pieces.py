"""An utterance's beam + LM decode, done piece by piece while it streams, so its final comes fast.

Decoding a whole utterance with the LM when it ends costs time proportional to its length (pyctcdecode
has no incremental search), all of it between the end of the audio and the final result. Instead, while
the audio streams, `UtterancePieces.offer` decodes the frames not yet committed in the background, one
decode at a time, and commits the words of the best hypothesis that end at least `lookahead_s` before
the frames it saw: those words were chosen with that much right context (the LM's next words and the
acoustics after them). The next piece starts where the first uncommitted word starts, and its search
starts from the LM's state after the committed words (`CTCDecoder.decode(context=...)`). At the end of
the utterance `final` decodes only the frames after the last commit.

    pieces = UtterancePieces(lm_decoder, frame_s=0.03, start_frame=0, options=PieceOptions())
    pieces.offer(seg_rows, next_frame)              # after each chunk: maybe starts a background decode
    [hyp] = await pieces.final(rows, end_frame, words=True, max_alternatives=1)  # times from the stream start

Background decodes are capped per decoder across all streams at one per decode worker: a final never
queues behind more than that, and when the CPU runs short and decodes slow down, streams skip pieces
instead of piling work on (their finals then decode more, as without pieces).

The transcript is the committed words followed by the last piece's; its confidence is the product of
the pieces' (each the best hypothesis' posterior among its decode's final beams). A failed background
decode commits nothing: the final then decodes more frames.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass

import numpy as np

from models.ctc_text import WordTiming
from server.speech_ctc import CTCDecoder, Hypothesis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PieceOptions:
    lookahead_s: float = 1.0  # audio after a word before it is committed; 0: decode the utterance whole at its end
    step_s: float = 1.0  # new audio, past the lookahead, that starts the next background decode

    def __post_init__(self) -> None:
        if self.lookahead_s < 0 or self.step_s <= 0:
            raise ValueError(f"lookahead_s must be >= 0 and step_s > 0, got {self.lookahead_s}, {self.step_s}")


@dataclass(frozen=True)
class _Piece:
    start: int  # absolute frame the decode started at
    end: int  # absolute frame it decoded up to (exclusive)
    hyp: Hypothesis  # word times from `start`


class _Running:
    """Background decodes running per decoder, across all streams: at most one per decode worker (one for an
    in-process decoder), so a final never queues behind more than that, and when the CPU is short and
    decodes slow down, streams stop starting them (their finals then decode more, as without pieces)."""

    def __init__(self) -> None:
        self._counts: weakref.WeakKeyDictionary[CTCDecoder, int] = weakref.WeakKeyDictionary()

    def try_start(self, decoder: CTCDecoder) -> bool:
        count = self._counts.get(decoder, 0)
        if count >= max(1, int(getattr(decoder, "workers", 1))):
            return False
        self._counts[decoder] = count + 1
        return True

    def done(self, decoder: CTCDecoder) -> None:
        self._counts[decoder] -= 1


_RUNNING = _Running()


class UtterancePieces:
    def __init__(self, decoder: CTCDecoder, frame_s: float, start_frame: int, options: PieceOptions) -> None:
        self.decoder, self.frame_s, self.options = decoder, frame_s, options
        self.start = start_frame  # the utterance's first frame
        self.piece_start = start_frame  # frames before it are committed
        self.committed: list[WordTiming] = []  # times from the start of the stream
        self.confidence = 1.0
        self._lookahead = round(options.lookahead_s / frame_s)
        self._step = max(1, round(options.step_s / frame_s))
        self._task: asyncio.Task[_Piece] | None = None

    @property
    def busy(self) -> bool:
        """A background decode is running."""
        return self._task is not None and not self._task.done()

    def _context(self) -> tuple[str, ...]:
        return tuple(w.word for w in self.committed)

    def offer(self, seg_rows: list[np.ndarray], next_frame: int, limit: int | None = None) -> None:
        """The utterance's rows so far (from `start_frame` to `next_frame`): commit a finished background
        decode, start the next when enough new frames wait. `limit`: a known end of this utterance (an
        endpoint) that a commit must not pass."""
        if self.options.lookahead_s == 0:
            return
        if self._task is not None:
            if not self._task.done():
                return
            self._apply(self._take_result(), limit)
        if next_frame - self.piece_start < self._lookahead + self._step:
            return
        if not _RUNNING.try_start(self.decoder):
            return
        rows = np.concatenate(seg_rows)[self.piece_start - self.start: next_frame - self.start]
        self._task = asyncio.create_task(self._decode(self.piece_start, next_frame, rows))
        decoder = self.decoder
        self._task.add_done_callback(lambda _: _RUNNING.done(decoder))  # also when cancelled before it ran

    async def _decode(self, start: int, end: int, rows: np.ndarray) -> _Piece:
        [hyp, *_] = await asyncio.to_thread(self.decoder.decode, rows, self.frame_s, words=True, max_alternatives=1,
                                            context=self._context())
        return _Piece(start, end, hyp)

    def _take_result(self) -> _Piece | None:
        task, self._task = self._task, None
        assert task is not None and task.done()
        if task.cancelled():
            return None
        error = task.exception()
        if error is not None:  # the final decodes these frames instead
            logger.warning("a background LM decode of a stream failed: %s", type(error).__name__)
            return None
        return task.result()

    def _apply(self, piece: _Piece | None, limit: int | None) -> None:
        if piece is None:
            return
        horizon = piece.end - self._lookahead
        if limit is not None:
            horizon = min(horizon, limit)
        words = piece.hyp.words
        ends = [piece.start + round(w.end_s / self.frame_s) for w in words]
        done = sum(1 for e in ends if e <= horizon)
        if done == 0:
            return
        # the next piece starts where the first word not committed starts (or at the horizon)
        cut = piece.start + round(words[done].start_s / self.frame_s) if done < len(words) else horizon
        offset = piece.start * self.frame_s
        self.committed += [WordTiming(w.word, w.start_s + offset, w.end_s + offset) for w in words[:done]]
        self.confidence *= piece.hyp.confidence
        self.piece_start = max(self.piece_start, min(cut, horizon))

    async def final(self, rows: np.ndarray, end: int, *, words: bool, max_alternatives: int) -> list[Hypothesis]:
        """Hypotheses for the whole utterance, `rows` being its frames from `start_frame` to `end`; word
        times from the start of the stream."""
        if self._task is not None:
            await asyncio.wait([self._task])
            self._apply(self._take_result(), end)
        rest = rows[max(0, self.piece_start - self.start): max(0, end - self.start)]
        hyps = await asyncio.to_thread(self.decoder.decode, rest, self.frame_s, words=words,
                                       max_alternatives=max_alternatives, context=self._context())
        offset = self.piece_start * self.frame_s
        prefix = " ".join(self._context())
        committed = tuple(self.committed) if words else ()
        return [Hypothesis(f"{prefix} {hyp.transcript}".strip(), self.confidence * hyp.confidence,
                           committed + tuple(WordTiming(w.word, w.start_s + offset, w.end_s + offset)
                                             for w in hyp.words))
                for hyp in hyps]

    def cancel(self) -> None:
        """Drop a background decode still running (the stream ended without a final)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

