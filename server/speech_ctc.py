"""Speech CTC pre/post-processing around an `Engine`: validate a request, batch waveforms, decode.

No gRPC and no torch here, so the server and the in-process `nui transcribe` share it bit for bit:

    model = SpeechCTCModel(load_engine(repo, "speech_ctc"))
    utt = model.prepare(wav_bytes, AudioEncoding.AUTO, 0, DecodeOptions(words=True), AudioLimits(), "id-1")
    [recognition] = model.run_batch([utt])  # a Recognition, or the item's own Exception

`run_batch` is the dynamic batcher's batch function: it pads the waveforms to the longest, runs the
engine once, slices each utterance's valid frames (`out_lengths`) and decodes each one on its own (all at
once when the LM decoder is a worker-process pool, server/decode_pool.py), so a decoding failure is
returned for that utterance only. Padding never changes valid frames (the model is
batch-invariant), so a clip's transcript does not depend on its batch-mates. Padding does cost engine
work, so the batcher groups clips of similar length (`padded_size`, `max_padding_waste`).

Decoding is pluggable (`CTCDecoder`): greedy always; beam search with an n-gram LM
(`models.ctc_beam`) when the manifest's extras name LM files, which `load_lm_decoder` reads:

    "extras": {"lm": {"arpa": "lm.arpa", "unigrams": "unigrams.txt"},   # files listed in "files" too
               "decoder": {"alpha": 0.5, "beta": 1.5, "beam_width": 32}}  # optional BeamOptions
"""

from __future__ import annotations

import dataclasses
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engines.engine import Engine
from engines.manifest import Manifest
from models.ctc_beam import BeamOptions, CTCBeamDecoder
from models.ctc_text import VOCAB, WordTiming, greedy_decode, greedy_word_timings
from models.speech_batch import pad_batch
from server.audio import AudioEncoding, AudioLimits, decode_audio, resample
from server.errors import invalid_argument
from server.tensor_batch import TensorRequest

TASK = "speech_ctc"
INPUT_AUDIO, INPUT_LENGTHS = "audio", "audio_lengths"
OUTPUT_LOG_PROBS, OUTPUT_LENGTHS = "log_probs", "out_lengths"
MAX_ALTERNATIVES = 10


@dataclass(frozen=True)
class Hypothesis:
    transcript: str
    confidence: float  # in [0, 1], comparable only within one decoder
    words: tuple[WordTiming, ...] = ()  # empty unless word times were asked for


@dataclass(frozen=True)
class Recognition:
    alternatives: tuple[Hypothesis, ...]  # best first, at least one
    audio_duration_s: float  # of the audio as received, before resampling


class CTCDecoder(Protocol):
    """Turns one utterance's valid log-probs (T, V) into hypotheses, best first: `decode` blocks until they
    are ready; `submit` starts it and returns a future (at once done for decoders that run in the caller's
    thread, running elsewhere for the worker-process pool, server/decode_pool.py); `close` frees what the
    decoder holds (the pool's processes) once its version is unloaded. `context`: the words decided
    before these frames, for a streaming utterance decoded piece by piece (only an LM uses them)."""

    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> list[Hypothesis]: ...

    def submit(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> Future[list[Hypothesis]]: ...

    def close(self) -> None: ...


class InlineDecoder(ABC):
    """A decoder that runs in the caller's thread: `submit` decodes now and returns a done future; nothing
    to close."""

    @abstractmethod
    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> list[Hypothesis]: ...

    def submit(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> Future[list[Hypothesis]]:
        future: Future[list[Hypothesis]] = Future()
        try:
            future.set_result(self.decode(log_probs, frame_s, words=words, max_alternatives=max_alternatives,
                                          context=context))
        except Exception as e:  # the caller gets it from result(), as from the pool's futures
            future.set_exception(e)
        return future

    def close(self) -> None:
        return None


class GreedyDecoder(InlineDecoder):
    """Best path. Confidence: geometric mean over frames of the best token's probability."""

    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> list[Hypothesis]:
        confidence = math.exp(float(log_probs.max(axis=-1).mean())) if len(log_probs) else 0.0
        timings = tuple(greedy_word_timings(log_probs, frame_s)) if words else ()
        return [Hypothesis(greedy_decode(log_probs), confidence, timings)]


class BeamLMDecoder(InlineDecoder):
    """Beam search fused with an n-gram LM. One hypothesis (the search keeps only its best); confidence
    is its posterior among the final beams."""

    def __init__(self, decoder: CTCBeamDecoder) -> None:
        self.decoder = decoder

    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> list[Hypothesis]:
        result = self.decoder.decode(log_probs, frame_s, context)
        return [Hypothesis(result.transcript, result.confidence, tuple(result.words) if words else ())]


def beam_options(extras_decoder: Any) -> BeamOptions:
    """BeamOptions from a manifest's extras["decoder"]: its fields, or `nui eval` results JSON holding
    them under "decoder"; absent means the defaults."""
    if extras_decoder is None:
        return BeamOptions()
    if not isinstance(extras_decoder, dict):
        raise ValueError(f'manifest extras["decoder"] must be an object, got {type(extras_decoder).__name__}')
    if isinstance(extras_decoder.get("decoder"), dict):
        extras_decoder = extras_decoder["decoder"]
    known = {f.name for f in dataclasses.fields(BeamOptions)}
    unknown = sorted(set(extras_decoder) - known)
    if unknown:
        raise ValueError(f'manifest extras["decoder"] has unknown keys {unknown}; known: {sorted(known)}')
    return BeamOptions(**extras_decoder)


@dataclass(frozen=True)
class LMSpec:
    """Where a version's LM lives and how to search with it (picklable: decode workers build from it)."""

    arpa: Path
    unigrams: Path | None
    options: BeamOptions


def lm_spec(version_dir: Path, manifest: Manifest) -> LMSpec | None:
    """The LM named by `manifest.extras["lm"]`, or None when the model ships no LM.

    The LM files must be listed in the manifest's `files` (so their sha256 was checked); ValueError
    otherwise or when the decoder options are malformed."""
    lm = manifest.extras.get("lm")
    if lm is None:
        return None
    if not isinstance(lm, dict) or not isinstance(lm.get("arpa"), str):
        raise ValueError(f'{version_dir}: manifest extras["lm"] must be {{"arpa": FILE, "unigrams": FILE}}, '
                         f"got {lm!r}")
    names = [lm["arpa"], *([lm["unigrams"]] if lm.get("unigrams") else [])]
    for name in names:
        if name not in manifest.files:
            raise ValueError(f"{version_dir}: LM file {name!r} is not listed in the manifest's files")
    return LMSpec(version_dir / lm["arpa"], version_dir / lm["unigrams"] if lm.get("unigrams") else None,
                  beam_options(manifest.extras.get("decoder")))


def build_lm_decoder(spec: LMSpec) -> BeamLMDecoder:
    """The in-process beam + LM decoder of `spec`; ValueError when the LM does not load."""
    try:
        unigrams = spec.unigrams.read_text(encoding="utf-8").split() if spec.unigrams else None
        decoder = CTCBeamDecoder(spec.arpa, unigrams, spec.options)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{spec.arpa.parent}: cannot load the language model: {e}") from e
    return BeamLMDecoder(decoder)


def load_lm_decoder(version_dir: Path, manifest: Manifest, workers: int = 0) -> CTCDecoder | None:
    """The version's beam + LM decoder (None when it ships no LM): in this process with `workers` 0, else
    a pool of that many started worker processes (server/decode_pool.py). ValueError when anything is off."""
    spec = lm_spec(version_dir, manifest)
    if spec is None:
        return None
    if workers == 0:
        return build_lm_decoder(spec)
    from server.decode_pool import PooledLMDecoder

    pool = PooledLMDecoder(spec, workers)
    pool.warm_up()
    return pool


@dataclass(frozen=True)
class SpeechSpec:
    """What serving needs from the model config, derived without torch (mirrors SpeechCTCConfig)."""

    sample_rate_hz: int
    min_samples: int  # shortest input that yields one output frame (one STFT window)
    frame_s: float  # seconds per output frame

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SpeechSpec:
        try:
            rate_hz = int(config["sample_rate_hz"])
            n_fft, hop = int(config["n_fft"]), int(config["hop_length"])
            time_stride = math.prod(int(s) for s in config["conv_time_strides"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"speech_ctc manifest config lacks or mangles {e}") from e
        return cls(sample_rate_hz=rate_hz, min_samples=n_fft, frame_s=hop * time_stride / rate_hz)


@dataclass(frozen=True)
class DecodeOptions:
    words: bool = False  # word start/end times
    use_lm: bool | None = None  # None: beam + LM when the model has an LM, else greedy
    max_alternatives: int = 1


@dataclass(frozen=True, eq=False)
class Utterance:
    """One validated request, ready for a batch."""

    samples: np.ndarray  # (S,) float32 at the model's rate, S >= min_samples
    audio_duration_s: float
    words: bool
    use_lm: bool
    max_alternatives: int
    request_id: str


class SpeechCTCModel:
    """A loaded speech CTC engine with its decoders; `prepare` validates, `run_batch` recognizes."""

    # Padding share one batch may carry (DynamicBatcher max_padding_waste). On a CPU a batch saves little
    # per clip (bench/results/batching_profile.md), so batches of near-equal lengths cost least.
    max_padding_waste = 0.1

    # With ONNX Runtime's threads left to the server (no --intra-op-threads) on the CPU: one thread per
    # engine run and one batch running per core (DynamicBatcher max_concurrent_runs), at most 4. On two
    # threads one run costs about twice the CPU per clip: the GRU's per-step operators are too small to
    # split (bench/results/batching_profile.md).
    auto_intra_op_threads = 1

    @staticmethod
    def auto_runs_at_once() -> int:
        return max(1, min(4, os.cpu_count() or 1))

    def __init__(self, engine: Engine, lm_decoder: CTCDecoder | None = None) -> None:
        manifest = engine.manifest
        where = f"{engine.name} version {engine.version}"
        if manifest.task != TASK:
            raise ValueError(f"{where}: manifest task is {manifest.task!r}, not {TASK!r}")
        names = ({t.name for t in manifest.inputs}, {t.name for t in manifest.outputs})
        if names != ({INPUT_AUDIO, INPUT_LENGTHS}, {OUTPUT_LOG_PROBS, OUTPUT_LENGTHS}):
            raise ValueError(f"{where}: a speech_ctc engine takes {INPUT_AUDIO}, {INPUT_LENGTHS} and returns "
                             f"{OUTPUT_LOG_PROBS}, {OUTPUT_LENGTHS}; the manifest lists {names}")
        self.engine = engine
        self.spec = SpeechSpec.from_config(manifest.config)
        self.greedy: CTCDecoder = GreedyDecoder()
        self.lm_decoder = lm_decoder

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def version(self) -> int:
        return self.engine.version

    @property
    def has_lm(self) -> bool:
        return self.lm_decoder is not None

    def prepare(self, audio: bytes, encoding: AudioEncoding, sample_rate_hz: int, options: DecodeOptions,
                limits: AudioLimits, request_id: str) -> Utterance:
        """Validate and convert one request (raises RequestError naming the field)."""
        if not 0 <= options.max_alternatives <= MAX_ALTERNATIVES:
            raise invalid_argument(f"config.max_alternatives is {options.max_alternatives}; allowed: "
                                   f"0..{MAX_ALTERNATIVES}")
        if options.use_lm and not self.has_lm:
            raise invalid_argument(f"config.decoder asks for the language model, but {self.name} version "
                                   f"{self.version} ships none; use DECODER_GREEDY or DECODER_UNSPECIFIED")
        decoded = decode_audio(audio, encoding, sample_rate_hz, limits)
        samples = resample(decoded, self.spec.sample_rate_hz)
        if len(samples) < self.spec.min_samples:
            need_s = self.spec.min_samples / self.spec.sample_rate_hz
            raise invalid_argument(f"audio is {decoded.duration_s:.3f} s long; {self.name} needs at least "
                                   f"{need_s:.3f} s ({self.spec.min_samples} samples at "
                                   f"{self.spec.sample_rate_hz} Hz)")
        use_lm = self.has_lm if options.use_lm is None else options.use_lm
        return Utterance(samples=samples, audio_duration_s=decoded.duration_s, words=options.words,
                         use_lm=use_lm, max_alternatives=max(1, options.max_alternatives),
                         request_id=request_id)

    @staticmethod
    def padded_size(item: Utterance | TensorRequest) -> int:
        """Samples per row an item of this model's batcher is padded to (DynamicBatcher `size_of`): its
        waveform, or a KServe request's `audio` width (those ride along in the same runs)."""
        if isinstance(item, Utterance):
            return len(item.samples)
        return int(item.inputs[INPUT_AUDIO].shape[1])

    def run_batch(self, utterances: list[Utterance]) -> list[Recognition | Exception]:
        """One engine run for the batch; each utterance gets its Recognition or its own exception."""
        log_probs, out_lengths = self._infer([u.samples for u in utterances])
        # every utterance's decode starts before any is awaited: with worker processes they run at once
        futures = [self._start_decode(log_probs[i, : int(out_lengths[i])], utt) for i, utt in enumerate(utterances)]
        results: list[Recognition | Exception] = []
        for utt, future in zip(utterances, futures, strict=True):
            try:
                results.append(self._recognition(future.result(), utt))
            except Exception as e:  # this utterance's decoding failed; its batch-mates' did not
                results.append(e)
        return results

    def close(self) -> None:
        """Free the decoders' resources (the LM decode pool's processes) once this version is unloaded."""
        if self.lm_decoder is not None:
            self.lm_decoder.close()

    def _infer(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        audio, lengths = pad_batch(waves)
        out = self.engine.run({INPUT_AUDIO: audio, INPUT_LENGTHS: lengths})
        log_probs, out_lengths = out[OUTPUT_LOG_PROBS], out[OUTPUT_LENGTHS]  # (B, T', V), (B,)
        if (log_probs.ndim != 3 or log_probs.shape[0] != len(waves) or log_probs.shape[2] != len(VOCAB)
                or out_lengths.shape != (len(waves),) or int(out_lengths.max()) > log_probs.shape[1]):
            raise RuntimeError(f"engine returned log_probs {log_probs.shape} and out_lengths "
                               f"{out_lengths.shape} for a batch of {len(waves)}")
        return log_probs, out_lengths

    def _start_decode(self, log_probs: np.ndarray, utt: Utterance) -> Future[list[Hypothesis]]:
        decoder = self.lm_decoder if utt.use_lm and self.lm_decoder is not None else self.greedy
        try:
            return decoder.submit(log_probs, self.spec.frame_s, words=utt.words,
                                  max_alternatives=utt.max_alternatives)
        except Exception as e:  # e.g. a broken decode pool: this utterance fails, not its batch
            failed: Future[list[Hypothesis]] = Future()
            failed.set_exception(e)
            return failed

    @staticmethod
    def _recognition(hyps: list[Hypothesis], utt: Utterance) -> Recognition:
        if not hyps:
            raise RuntimeError("the decoder returned no hypothesis")
        return Recognition(tuple(hyps[: utt.max_alternatives]), utt.audio_duration_s)
