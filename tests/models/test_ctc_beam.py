"""CTC beam search on synthetic peaky log-probs: agreement with greedy, LM fusion, word times, threads."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kenlm
import numpy as np
import pytest

from models.ctc_beam import LABELS, BeamOptions, CTCBeamDecoder
from models.ctc_text import BLANK, CHAR_TO_ID, VOCAB, greedy_decode, greedy_word_timings
from training.speech_ctc.lm import build

FRAME_S = 0.03
LM_TEXT = [
    "the cat sat on the mat",
    "the cat sat down",
    "a cat sat on a hat",
    "the dog was sad",
    "a sad dog sat",
    "the cat sat",
    "it's the cat",
]


def _frame(probs: dict[int, float]) -> np.ndarray:
    """One frame of log-probs: the given ids get their probabilities, the rest share what is left."""
    p = np.full(len(VOCAB), (1.0 - sum(probs.values())) / (len(VOCAB) - len(probs)))
    for i, pi in probs.items():
        p[i] = pi
    return np.log(p)


def _spell(text: str, frames_per_char: int = 3, ambiguous: dict[int, dict[str, float]] | None = None
           ) -> np.ndarray:
    """(T, V) peaky log-probs spelling text: 2 blank frames, each character held frames_per_char frames
    then a blank, 2 blank frames. ambiguous[i] replaces character i by one frame with those probabilities
    (one frame, so no alignment can mix the competing characters)."""
    frames = [_frame({BLANK: 0.9})] * 2
    for i, ch in enumerate(text):
        if ambiguous and i in ambiguous:
            frames.append(_frame({CHAR_TO_ID[c]: p for c, p in ambiguous[i].items()}))
        else:
            frames += [_frame({CHAR_TO_ID[ch]: 0.9})] * frames_per_char
        frames.append(_frame({BLANK: 0.9}))
    frames += [_frame({BLANK: 0.9})] * 2
    return np.stack(frames)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    (root / "lm_text.txt").write_text("".join(f"{s}\n" for s in LM_TEXT), encoding="utf-8")
    build(root / "lm_text.txt", root / "lm", order=3)
    return root / "lm"


@pytest.fixture(scope="module")
def lm_decoder(lm_dir: Path) -> CTCBeamDecoder:
    return CTCBeamDecoder.from_lm_dir(lm_dir, BeamOptions(beam_width=16))


def test_labels_follow_pyctcdecode_conventions() -> None:
    assert LABELS[BLANK] == "" and LABELS[CHAR_TO_ID[" "]] == " " and LABELS[CHAR_TO_ID["'"]] == "'"
    assert len(LABELS) == len(VOCAB)


@pytest.mark.parametrize("text", ["the cat sat", "it's a dog", " the  cat sat "])
def test_without_lm_equals_greedy_on_unambiguous_input(text: str) -> None:
    log_probs = _spell(text)
    result = CTCBeamDecoder().decode(log_probs, FRAME_S)
    assert result.transcript == greedy_decode(log_probs)
    assert result.words == greedy_word_timings(log_probs, FRAME_S)
    assert result.confidence > 0.99
    assert result.score == pytest.approx(result.acoustic_logp)  # no LM: the score is acoustic


def test_lm_fixes_an_acoustically_ambiguous_word(lm_dir: Path, lm_decoder: CTCBeamDecoder) -> None:
    # The last character is 'd' at 0.5 against 't' at 0.4: greedy and the plain beam say "sad",
    # the LM has seen "cat sat" three times and "cat sad" never.
    log_probs = _spell("the cat sat", ambiguous={10: {"d": 0.5, "t": 0.4}})
    assert greedy_decode(log_probs) == "the cat sad"
    assert CTCBeamDecoder().decode(log_probs, FRAME_S).transcript == "the cat sad"
    result = lm_decoder.decode(log_probs, FRAME_S)
    assert result.transcript == "the cat sat"
    # Unigrams read from the ARPA file itself give the same decoder.
    assert CTCBeamDecoder(lm_dir / "lm.arpa", None, lm_decoder.options).decode(log_probs, FRAME_S) == result
    assert result.acoustic_logp < result.score  # the LM paid for the acoustically worse choice
    assert 0.5 < result.confidence < 1.0
    # Clear acoustics are not overridden: "sad" stays where the audio says it plainly.
    assert lm_decoder.decode(_spell("the dog was sad"), FRAME_S).transcript == "the dog was sad"


def test_context_words_start_the_lm_where_an_earlier_piece_left_it(lm_decoder: CTCBeamDecoder) -> None:
    # "sa?" with 'd' at 0.5 and 't' at 0.4: after "the cat" the LM says "sat", after "the dog was" "sad"
    piece = _spell("sat", ambiguous={2: {"d": 0.5, "t": 0.4}})
    assert lm_decoder.decode(piece, FRAME_S, context=("the", "cat")).transcript == "sat"
    assert lm_decoder.decode(piece, FRAME_S, context=("the", "dog", "was")).transcript == "sad"
    assert CTCBeamDecoder().decode(piece, FRAME_S, context=("the", "cat")).transcript == "sad"  # no LM: no effect


def test_word_timings_are_seconds_in_order_inside_the_utterance(lm_decoder: CTCBeamDecoder) -> None:
    log_probs = _spell("the cat sat on the mat", frames_per_char=2)
    duration_s = log_probs.shape[0] * FRAME_S
    result = lm_decoder.decode(log_probs, FRAME_S)
    assert result.transcript == "the cat sat on the mat"
    assert [w.word for w in result.words] == result.transcript.split()
    ends = [0.0]
    for w in result.words:
        assert ends[-1] <= w.start_s < w.end_s <= duration_s
        ends.append(w.end_s)
    # 2 leading blanks; "the" is 3 characters of 2 frames, each followed by a blank: frames 2..9.
    assert result.words[0].start_s == pytest.approx(2 * FRAME_S)
    assert result.words[0].end_s == pytest.approx(10 * FRAME_S)
    assert result.words == greedy_word_timings(log_probs, FRAME_S)


@pytest.mark.parametrize("use_lm", [False, True])
def test_empty_and_all_blank_input_give_no_words(use_lm: bool, lm_decoder: CTCBeamDecoder) -> None:
    decoder = lm_decoder if use_lm else CTCBeamDecoder()
    for log_probs in (np.zeros((0, len(VOCAB))), np.stack([_frame({BLANK: 0.99})] * 20)):
        result = decoder.decode(log_probs, FRAME_S)
        assert result.transcript == "" and result.words == []
        assert 0.0 <= result.confidence <= 1.0


def test_end_of_utterance_is_scored_as_end_of_sentence_only(lm_dir: Path, lm_decoder: CTCBeamDecoder) -> None:
    # pyctcdecode 0.5 alone would score a trailing space (or an empty transcript) as an extra <unk> word.
    model = kenlm.Model(str(lm_dir / "lm.arpa"))
    alpha = lm_decoder.options.alpha
    silent = lm_decoder.decode(np.stack([_frame({BLANK: 0.99})] * 20), FRAME_S)
    p_end = model.score("", bos=True, eos=True)  # log10 p(</s> | <s>)
    assert silent.score - silent.acoustic_logp == pytest.approx(alpha * p_end * math.log(10), abs=1e-4)
    plain = lm_decoder.decode(_spell("the cat sat"), FRAME_S)
    trailing = lm_decoder.decode(_spell("the cat sat "), FRAME_S)
    assert trailing.transcript == plain.transcript
    lm_part = plain.score - plain.acoustic_logp
    assert trailing.score - trailing.acoustic_logp == pytest.approx(lm_part, abs=1e-4)
    log10_p = model.score("the cat sat", bos=True, eos=True)
    expected = alpha * log10_p * math.log(10) + 3 * lm_decoder.options.beta
    assert lm_part == pytest.approx(expected, abs=1e-4)


def test_concurrent_decoding_matches_sequential(lm_decoder: CTCBeamDecoder) -> None:
    texts = ["the cat sat", "a sad dog sat", "the cat sat on the mat", "it's the cat", "a cat sat on a hat"]
    # Each last character 't' is a single frame of 't' at 0.5 against 's' at 0.4.
    batch = [_spell(t, ambiguous={len(t) - 1: {"t": 0.5, "s": 0.4}}) for t in texts] * 4
    sequential = lm_decoder.decode_batch(batch, FRAME_S)
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda lp: lm_decoder.decode(lp, FRAME_S), batch))
    assert concurrent == sequential
    assert [r.transcript for r in sequential] == texts * 4


def test_rejects_bad_input_and_missing_files(tmp_path: Path) -> None:
    decoder = CTCBeamDecoder()
    with pytest.raises(ValueError, match="shape"):
        decoder.decode(np.zeros((10, len(VOCAB) - 1)), FRAME_S)
    with pytest.raises(ValueError, match="frame_s"):
        decoder.decode(_spell("a"), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        decoder.decode(np.full((4, len(VOCAB)), np.nan), FRAME_S)
    with pytest.raises(ValueError, match="beam_width"):
        BeamOptions(beam_width=0)
    with pytest.raises(FileNotFoundError):
        CTCBeamDecoder(tmp_path / "missing.arpa")
    with pytest.raises(FileNotFoundError):
        CTCBeamDecoder.from_lm_dir(tmp_path)
    with pytest.raises(ValueError, match="without a language model"):
        CTCBeamDecoder(None, ["the", "cat"])
    decoder.close()
    with pytest.raises(RuntimeError, match="close"):
        decoder.decode(_spell("a"), FRAME_S)
