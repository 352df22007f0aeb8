"""server/stream_pieces.py: an utterance's LM final decoded piece by piece while it streams."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.ctc_beam import BeamOptions, CTCBeamDecoder
from server.speech_ctc import BeamLMDecoder, Hypothesis
from server.stream_pieces import PieceOptions, UtterancePieces
from tests.models.test_ctc_beam import FRAME_S, LM_TEXT, _spell
from training.speech_ctc.lm import build

SENTENCE = "the cat sat on the mat the dog was sad a sad dog sat the cat sat down"
CHUNK = 4  # frames per engine call, as the streaming engines emit them


class Recording(BeamLMDecoder):
    """The real beam + LM decoder, noting how many frames each decode was given."""

    def __init__(self, decoder: CTCBeamDecoder, fail: bool = False) -> None:
        super().__init__(decoder)
        self.frames: list[int] = []
        self.fail = fail

    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool, max_alternatives: int,
               context: tuple[str, ...] | list[str] = ()) -> list[Hypothesis]:
        self.frames.append(len(log_probs))
        if self.fail and len(self.frames) == 1:
            raise RuntimeError("the first decode fails")
        return super().decode(log_probs, frame_s, words=words, max_alternatives=max_alternatives, context=context)


@pytest.fixture(scope="module")
def beam(tmp_path_factory: pytest.TempPathFactory) -> CTCBeamDecoder:
    root = tmp_path_factory.mktemp("lm")
    (root / "lm_text.txt").write_text("".join(f"{s}\n" for s in LM_TEXT), encoding="utf-8")
    build(root / "lm_text.txt", root / "lm", order=3)
    return CTCBeamDecoder.from_lm_dir(root / "lm", BeamOptions(beam_width=16))


async def _stream(pieces: UtterancePieces, rows: np.ndarray, start: int = 0, limit: int | None = None) -> None:
    """Hand the rows over a chunk at a time, letting each background decode finish (as real time would)."""
    seg: list[np.ndarray] = []
    for i in range(0, len(rows), CHUNK):
        seg.append(rows[i: i + CHUNK])
        pieces.offer(seg, start + i + len(seg[-1]), limit)
        await asyncio.sleep(0)  # the server awaits the next chunk between offers
        while pieces.busy:
            await asyncio.sleep(0.001)


async def test_pieces_give_the_whole_utterances_words_and_leave_little_for_the_end(beam: CTCBeamDecoder) -> None:
    rows = _spell(SENTENCE, ambiguous={SENTENCE.index("was sad") + 6: {"d": 0.5, "t": 0.4}})  # "was sa?": sad
    whole = BeamLMDecoder(beam).decode(rows, FRAME_S, words=True, max_alternatives=1)[0]
    assert whole.transcript == SENTENCE
    decoder = Recording(beam)
    options = PieceOptions(lookahead_s=1.0, step_s=0.5)
    pieces = UtterancePieces(decoder, FRAME_S, 0, options)
    await _stream(pieces, rows)
    assert len(pieces.committed) >= 8  # most of the 16 words were decided while the audio streamed
    [hyp] = await pieces.final(rows, len(rows), words=True, max_alternatives=1)
    assert hyp.transcript == whole.transcript
    assert [w.word for w in hyp.words] == [w.word for w in whole.words]
    assert [w.start_s for w in hyp.words] == pytest.approx([w.start_s for w in whole.words])
    assert [w.end_s for w in hyp.words] == pytest.approx([w.end_s for w in whole.words])
    assert 0 < hyp.confidence <= 1
    # the final decoded at most lookahead + step + a chunk and a word's worth of frames, not the whole
    assert decoder.frames[-1] <= (options.lookahead_s + options.step_s) / FRAME_S + CHUNK + 16 < len(rows) / 2
    no_words = await UtterancePieces(Recording(beam), FRAME_S, 0, options).final(rows, len(rows), words=False,
                                                                                max_alternatives=1)
    assert no_words[0].transcript == whole.transcript and no_words[0].words == ()


async def test_times_count_from_the_stream_start_and_an_endpoint_bounds_the_commits(beam: CTCBeamDecoder) -> None:
    rows = _spell(SENTENCE)
    start = 500  # this utterance began 15 s into the stream
    limit = start + len(rows) // 2  # an endpoint the engine has not reached yet
    pieces = UtterancePieces(Recording(beam), FRAME_S, start, PieceOptions())
    await _stream(pieces, rows, start, limit)
    assert pieces.committed and all(w.end_s <= limit * FRAME_S + 1e-9 for w in pieces.committed)
    assert pieces.committed[0].start_s >= start * FRAME_S
    [hyp] = await pieces.final(rows, start + len(rows), words=True, max_alternatives=1)
    assert hyp.transcript == SENTENCE
    assert hyp.words[0].start_s == pytest.approx(start * FRAME_S + 2 * FRAME_S)  # after 2 blank frames


async def test_a_failed_background_decode_commits_nothing_and_the_final_decodes_the_rest(
        beam: CTCBeamDecoder, caplog: pytest.LogCaptureFixture) -> None:
    rows = _spell(SENTENCE)
    decoder = Recording(beam, fail=True)
    pieces = UtterancePieces(decoder, FRAME_S, 0, PieceOptions())
    await _stream(pieces, rows)
    [hyp] = await pieces.final(rows, len(rows), words=False, max_alternatives=1)
    assert hyp.transcript == SENTENCE
    assert "background LM decode of a stream failed: RuntimeError" in caplog.text
    assert "the cat" not in caplog.text and "first decode fails" not in caplog.text  # no content, no message


async def test_lookahead_zero_decodes_the_utterance_once_at_its_end(beam: CTCBeamDecoder) -> None:
    rows = _spell(SENTENCE)
    decoder = Recording(beam)
    pieces = UtterancePieces(decoder, FRAME_S, 0, PieceOptions(lookahead_s=0.0))
    await _stream(pieces, rows)
    [hyp] = await pieces.final(rows, len(rows), words=False, max_alternatives=1)
    assert decoder.frames == [len(rows)] and hyp.transcript == SENTENCE
    with pytest.raises(ValueError, match="lookahead_s"):
        PieceOptions(lookahead_s=-1.0)


async def test_background_decodes_are_capped_per_decoder_across_streams(beam: CTCBeamDecoder) -> None:
    import threading

    release = threading.Event()

    class Slow(Recording):
        workers = 2  # a decode pool of two processes

        def decode(self, *args: object, **kwargs: object) -> list[Hypothesis]:  # type: ignore[override]
            release.wait(10)
            return super().decode(*args, **kwargs)  # type: ignore[arg-type]

    decoder = Slow(beam)
    rows = _spell(SENTENCE)
    streams = [UtterancePieces(decoder, FRAME_S, 0, PieceOptions()) for _ in range(3)]
    for pieces in streams:
        pieces.offer([rows], len(rows))
    assert [p.busy for p in streams] == [True, True, False]  # the third stream waits for a free worker
    streams[0].cancel()
    for _ in range(100):  # the cancellation and the task's done callbacks take a few loop turns
        await asyncio.sleep(0.001)
        streams[2].offer([rows], len(rows))
        if streams[2].busy:
            break
    assert streams[2].busy  # the cancelled decode's slot is free again
    release.set()
    for pieces in streams[1:]:
        [hyp] = await pieces.final(rows, len(rows), words=False, max_alternatives=1)
        assert hyp.transcript == SENTENCE
