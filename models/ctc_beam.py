"""CTC beam search over the character vocabulary, with optional word n-gram LM shallow fusion.

Shared by training evaluation and the gRPC server, so it imports no torch: numpy, pyctcdecode (the
search) and kenlm (the LM, an ARPA file from `training/speech_ctc/lm.py`). A hypothesis scores

    log p_ctc(text | audio) + alpha * ln p_lm(words) + beta * len(words)

(shallow fusion, as in the decoders of Hannun et al. 2014, "Deep Speech", and Amodei et al. 2016,
"Deep Speech 2"). Nothing here downloads anything: the LM is a local file or absent (plain search).

    decoder = CTCBeamDecoder.from_lm_dir(Path("runs/lm"), BeamOptions(beam_width=32))
    result = decoder.decode(log_probs, frame_s=0.03)  # log_probs: (T, V) valid frames
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import kenlm
import numpy as np
from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel
from pyctcdecode.constants import LOG_BASE_CHANGE_FACTOR
from pyctcdecode.language_model import load_unigram_set_from_arpa

from models.ctc_text import BLANK, VOCAB, WordTiming, normalize_text

logger = logging.getLogger(__name__)

# pyctcdecode's label conventions: "" is the CTC blank and " " the word separator; every other label
# is a plain character, so "'" simply joins letters into words such as "it's" (no special case).
LABELS: tuple[str, ...] = tuple("" if i == BLANK else c for i, c in enumerate(VOCAB))
_LM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})


@dataclass(frozen=True)
class BeamOptions:
    # Hypotheses kept after each frame. Decoding time grows about linearly with it.
    beam_width: int = 32
    # LM weight in the score above (per word, on the natural-log LM probability). Tune on a dev set;
    # 0.5 is pyctcdecode's default. Ignored without an LM.
    alpha: float = 0.5
    # Word insertion bonus in nats per word: offsets the LM's per-word cost, which otherwise favours
    # dropping or merging words. Tune together with alpha. Ignored without an LM.
    beta: float = 1.5
    # After each frame, drop hypotheses scoring more than this many nats below the best one.
    beam_prune_logp: float = -10.0
    # Characters with a frame log-probability below this are not tried in that frame (the frame's
    # argmax always is): the main speed knob for peaky CTC outputs.
    token_min_logp: float = -5.0
    # Penalty (log10, before alpha) for a word outside the LM vocabulary. pyctcdecode also adds it, as is,
    # to a partial word that is no prefix of a vocabulary word, which keeps the search on known words.
    unk_score_offset: float = -10.0

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        for name in ("beam_prune_logp", "token_min_logp", "unk_score_offset"):
            if getattr(self, name) > 0:
                raise ValueError(f"{name} must be <= 0 (a log-probability offset), got {getattr(self, name)}")


@dataclass(frozen=True)
class DecodeResult:
    transcript: str  # normalized words joined by single spaces; "" when nothing was said
    words: list[WordTiming]  # one per transcript word, in order, times in seconds within the utterance
    score: float  # the best hypothesis' score above (nats), comparable across hypotheses of one input
    acoustic_logp: float  # its log p_ctc part alone (nats), summed over the alignments the beam kept
    confidence: float  # its posterior among the final hypotheses, exp(score) normalized over them: [0, 1]


class _LanguageModel(LanguageModel):
    """pyctcdecode's kenlm wrapper, with the end of the utterance scored correctly.

    pyctcdecode 0.5 scores the empty "word" left by a trailing space, or by an empty transcript, when it
    adds </s>: kenlm maps "" to <unk>, so such a hypothesis pays p(<unk>) + unk_score_offset + beta (about
    -13 nats at the defaults). An all-blank input then scores worse than a hallucinated word, and
    "the cat " loses to "the cat". Only p(</s> | history) belongs there.
    """

    def __init__(self, model: kenlm.Model, unigrams: Iterable[str], options: BeamOptions) -> None:
        super().__init__(
            model, list(unigrams), alpha=options.alpha, beta=options.beta,
            unk_score_offset=options.unk_score_offset, score_boundary=True,
        )
        self._model = model

    def score(
        self, prev_state: kenlm.State, word: str, is_last_word: bool = False
    ) -> tuple[float, kenlm.State]:
        if word:
            return super().score(prev_state, word, is_last_word=is_last_word)
        if not is_last_word:
            return 0.0, prev_state
        end_log10 = self._model.BaseScore(prev_state, "</s>", kenlm.State())
        return self.alpha * end_log10 * LOG_BASE_CHANGE_FACTOR, prev_state


class CTCBeamDecoder:
    """Beam search decoder for one acoustic model vocabulary (`models.ctc_text.VOCAB`).

    Thread safety: `decode` and `decode_batch` may be called from several threads at once. Each call
    keeps its search state local; the shared LM is only read (kenlm models are read-only after loading,
    see flashlight/text#21), and nothing mutates the decoder after construction. The search is pure
    Python and holds the GIL, so threads give concurrency, not parallel speed-up: use processes for that.
    """

    def __init__(
        self,
        arpa_path: str | Path | None = None,
        unigrams: Iterable[str] | None = None,
        options: BeamOptions | None = None,
    ) -> None:
        """arpa_path: kenlm model (ARPA or binary) or None for beam search without an LM.
        unigrams: the LM's word list (pyctcdecode builds its prefix trie from it); read from the file when
        None and the file is ARPA."""
        self._options = options or BeamOptions()
        language_model: _LanguageModel | None = None
        if arpa_path is not None:
            path = Path(arpa_path)
            if not path.is_file():
                raise FileNotFoundError(f"language model file not found: {path}")
            if unigrams is None:
                if path.suffix != ".arpa":
                    raise ValueError(f"unigrams are required with a binary language model ({path})")
                unigrams = load_unigram_set_from_arpa(str(path))
            try:
                model = kenlm.Model(str(path))
            except (OSError, RuntimeError) as e:
                raise OSError(f"kenlm could not load {path}: {e}") from e
            words = sorted({w for w in unigrams if w not in _LM_SPECIAL_WORDS})
            language_model = _LanguageModel(model, words, self._options)
            logger.info("loaded %d-gram LM %s with %d unigrams", model.order, path, len(words))
        elif unigrams is not None:
            raise ValueError("unigrams were given without a language model (arpa_path is None)")
        alphabet = Alphabet.build_alphabet(list(LABELS))
        # Internal invariant: pyctcdecode must have kept our labels as they are (no appended blank).
        assert alphabet.labels == list(LABELS) and not alphabet.is_bpe, alphabet.labels
        self._decoder = BeamSearchDecoderCTC(alphabet, language_model)
        self._language_model = language_model
        # pyctcdecode keeps the LM in a class-level dict until cleanup(); release it with this object.
        self._finalizer = weakref.finalize(self, self._decoder.cleanup)

    @classmethod
    def from_lm_dir(cls, lm_dir: str | Path, options: BeamOptions | None = None) -> CTCBeamDecoder:
        """Load lm_dir/lm.arpa and lm_dir/unigrams.txt as written by `training.speech_ctc.lm`."""
        lm_dir = Path(lm_dir)
        unigrams_path = lm_dir / "unigrams.txt"
        if not unigrams_path.is_file():
            raise FileNotFoundError(f"unigram list not found: {unigrams_path}")
        unigrams = unigrams_path.read_text(encoding="utf-8").split()
        return cls(lm_dir / "lm.arpa", unigrams, options)

    @property
    def options(self) -> BeamOptions:
        return self._options

    @property
    def has_lm(self) -> bool:
        return self._language_model is not None

    def close(self) -> None:
        """Release the LM now rather than at garbage collection; not while other threads decode."""
        self._finalizer()

    def decode(self, log_probs: np.ndarray, frame_s: float, context: Sequence[str] = ()) -> DecodeResult:
        """Best hypothesis for one utterance, or for the next piece of one.

        log_probs: (T, V) log-probabilities of the valid frames (V = len(VOCAB)); frame_s: seconds per
        frame. An empty or all-blank input gives an empty transcript and no words. context: the words
        already decided before these frames (a streaming utterance decoded piece by piece): the LM
        starts from its state after them instead of the sentence start; the result holds the piece's
        own words only.
        """
        if log_probs.ndim != 2 or log_probs.shape[1] != len(VOCAB):
            raise ValueError(f"log_probs must have shape (T, {len(VOCAB)}), got {log_probs.shape}")
        if not frame_s > 0:
            raise ValueError(f"frame_s must be > 0, got {frame_s}")
        if not self._finalizer.alive:
            raise RuntimeError("decode() called after close()")
        num_frames = log_probs.shape[0]
        if num_frames == 0:
            return DecodeResult("", [], 0.0, 0.0, 1.0)
        if np.isnan(log_probs).any():
            raise ValueError("log_probs contains NaN")
        o = self._options
        # pyctcdecode renormalizes with log_softmax (a no-op on log-probs) and clips at log(1e-15).
        beams = self._decoder.decode_beams(
            np.asarray(log_probs, dtype=np.float64),
            beam_width=o.beam_width,
            beam_prune_logp=o.beam_prune_logp,
            token_min_logp=o.token_min_logp,
            # Keep only the best of hypotheses that agree on the last order-1 words and the partial word:
            # the LM can no longer tell them apart, so this costs n-best variety, not the top hypothesis
            # (pyctcdecode's own decode() does the same).
            prune_history=True,
            lm_start_state=self._start_state(context),
        )
        # Each beam: (text, lm state, [(word, (start frame, end frame exclusive))], acoustic, total).
        _, _, word_frames, acoustic_logp, score = beams[0]
        scores = np.array([b[4] for b in beams], dtype=np.float64)
        confidence = float(1.0 / np.exp(scores - score).sum())
        words: list[WordTiming] = []
        for word, (start, end) in word_frames:
            start = min(max(start, 0), num_frames - 1)
            end = min(max(end, start + 1), num_frames)
            # Strays such as a leading apostrophe are cleaned as normalize_text would; a piece it splits
            # off keeps the whole word's span.
            for piece in normalize_text(word).split():
                words.append(WordTiming(piece, start * frame_s, end * frame_s))
        transcript = " ".join(w.word for w in words)
        return DecodeResult(transcript, words, float(score), float(acoustic_logp), confidence)

    def _start_state(self, context: Sequence[str]) -> kenlm.State | None:
        """The LM's state after the sentence start and `context` (its last order - 1 words are enough);
        None (pyctcdecode's own start) without context or without an LM."""
        lm = self._language_model
        if not context or lm is None:
            return None
        state = lm.get_start_state()
        for word in context[max(0, len(context) - (lm.order - 1)):]:  # none for a unigram LM
            _, state = lm.score(state, word)
        return state

    def decode_batch(self, batch: Sequence[np.ndarray], frame_s: float) -> list[DecodeResult]:
        """`decode` for each utterance in turn (each (T_i, V), valid frames only)."""
        return [self.decode(log_probs, frame_s) for log_probs in batch]

