"""Streaming recognition behind the servicers: per-stream state, batch dispatch of chunks, interim/final results.

A streaming engine (`engines/export_speech_streaming.py`) runs one fixed-size chunk for a batch of
streams and returns each stream's new state. `StreamingModel.run_batch` is the dynamic batcher's batch
function: it stacks the states of whichever streams' chunks are waiting into one engine run (Deep Speech
2's "batch dispatch": a stream's next chunk joins whatever batch is forming) and splits the outputs.

`RecognitionStream` is one client's stream: `feed(audio bytes)` and `finish()` return results.

    model = StreamingModel(load_engine(repo, "speech_ctc_streaming"))
    stream = RecognitionStream(model, batcher.submit, StreamOptions(sample_rate_hz=16000), StreamLimits(), "id")
    results = await stream.feed(pcm16_bytes)   # interim results (when asked for), finals at endpoints
    results += await stream.finish()           # end of stream: flush, final result

Endpointing (server/endpointing.py) is an energy VAD on the audio: after speech, `silence_ms` of silence
ends an utterance, and its final result comes as soon as the engine has emitted the frames up to there.
Interim results are greedy; finals use beam search + the model's LM when it has one (unless asked for
greedy), decoded piece by piece while the audio streams (server/stream_pieces.py), so the work left when
the audio ends is the last second or so. Logs never carry audio or text.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc
import numpy as np
import soxr

from engines.engine import Engine, load_engine
from engines.manifest import Manifest, version_dir
from models.ctc_text import BLANK, VOCAB, WordTiming, decode_ids, greedy_decode
from server.batcher import DynamicBatcher
from server.endpointing import EndpointOptions, EnergyEndpointer
from server.errors import RequestError, invalid_argument, out_of_range
from server.speech_ctc import CTCDecoder, GreedyDecoder, Hypothesis, load_lm_decoder
from server.stream_pieces import PieceOptions, UtterancePieces

logger = logging.getLogger(__name__)

TASK = "speech_ctc_streaming"
DEFAULT_MODEL = "speech_ctc_streaming"
Encoding = Literal["pcm16", "float32"]


@dataclass(frozen=True)
class StateTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]  # without the batch axis


@dataclass(frozen=True)
class StreamingSpec:
    """What serving needs from a streaming engine's manifest."""

    sample_rate_hz: int
    frame_s: float
    chunk_samples: int
    chunk_frames: int
    lag_frames: int  # output frames the engine's rows trail the audio by (its lookahead)
    states: tuple[StateTensor, ...]
    out_suffix: str

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> StreamingSpec:
        try:
            s = manifest.extras["streaming"]
            return cls(sample_rate_hz=int(manifest.config["sample_rate_hz"]),
                       frame_s=float(manifest.extras["frame_s"]), chunk_samples=int(s["chunk_samples"]),
                       chunk_frames=int(s["chunk_frames"]), lag_frames=int(s["lag_frames"]),
                       states=tuple(StateTensor(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]))
                                    for t in s["state"]),
                       out_suffix=str(s["state_out_suffix"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{manifest.model}: streaming manifest lacks or mangles {e}") from e


@dataclass(frozen=True, eq=False)
class ChunkJob:
    audio: np.ndarray  # (chunk_samples,) float32, zero-padded after the stream's end
    stream_samples: int  # the stream's total samples once its end is known, else -1
    state: dict[str, np.ndarray]  # per state tensor, without the batch axis


def is_flush(item: object) -> bool:
    """A chunk of a stream whose end is known (the batcher's `urgent`: the stream's final waits on it)."""
    return isinstance(item, ChunkJob) and item.stream_samples >= 0


@dataclass(frozen=True, eq=False)
class ChunkOutput:
    log_probs: np.ndarray  # (n, V): the rows this call finalized (pipeline lag and padding removed)
    first_frame: int  # stream output-frame index of log_probs[0]
    finished: bool  # the stream's last frame is out (flush done)
    state: dict[str, np.ndarray]


class StreamingModel:
    """A loaded streaming engine with its decoders; `run_batch` runs one chunk of each of many streams."""

    def __init__(self, engine: Engine, lm_decoder: CTCDecoder | None = None) -> None:
        if engine.manifest.task != TASK:
            raise ValueError(f"{engine.name} version {engine.version}: manifest task is "
                             f"{engine.manifest.task!r}, not {TASK!r}")
        self.engine = engine
        self.spec = StreamingSpec.from_manifest(engine.manifest)
        self.greedy: CTCDecoder = GreedyDecoder()
        self.lm_decoder = lm_decoder

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def version(self) -> int:
        return self.engine.version

    def close(self) -> None:
        """Free the decoders' resources (the LM decode pool's processes) once this version is unloaded."""
        if self.lm_decoder is not None:
            self.lm_decoder.close()

    def initial_state(self) -> dict[str, np.ndarray]:
        return {t.name: np.zeros(t.shape, dtype=t.dtype) for t in self.spec.states}

    def run_batch(self, jobs: list[ChunkJob]) -> list[ChunkOutput | Exception]:
        spec = self.spec
        feed = {"audio_chunk": np.stack([j.audio for j in jobs]).astype(np.float32, copy=False),
                "stream_samples": np.array([j.stream_samples for j in jobs], dtype=np.int64)}
        feed |= {t.name: np.stack([j.state[t.name] for j in jobs]) for t in spec.states}
        out = self.engine.run(feed)
        log_probs, frame_index, stream_frames = out["log_probs"], out["frame_index"], out["stream_frames"]
        if log_probs.shape != (len(jobs), spec.chunk_frames, len(VOCAB)):
            raise RuntimeError(f"engine returned log_probs {log_probs.shape} for {len(jobs)} chunks")
        results: list[ChunkOutput | Exception] = []
        n = spec.chunk_frames
        for i in range(len(jobs)):
            first, end = int(frame_index[i]), int(stream_frames[i])
            lo, hi = max(0, -first), n if end < 0 else min(n, end - first)
            results.append(ChunkOutput(
                log_probs=log_probs[i, lo:max(lo, hi)].copy(), first_frame=first + lo,
                finished=end >= 0 and first + n >= end,
                state={t.name: out[t.name + spec.out_suffix][i] for t in spec.states}))
        return results


@dataclass(eq=False)
class ServedStreamingModel:
    """A streaming model version with its batcher; `open_streams` counts the streams running on it (a
    retired version keeps its batcher until they end, server/model_store.py)."""

    model: StreamingModel
    batcher: DynamicBatcher[ChunkJob, ChunkOutput]
    open_streams: int = 0

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Around one stream's life on this version."""
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1


def load_streaming_model(repo: Path, name: str, version: int, intra_op_threads: int | None = None,
                         provider: str = "cpu", decode_workers: int = 0) -> StreamingModel:
    """One streaming version (with its LM when it ships one, decoded in `decode_workers` processes), checksums
    verified; ValueError when off."""
    engine = load_engine(repo, name, version, intra_op_threads, provider=provider)
    return StreamingModel(engine, load_lm_decoder(version_dir(Path(repo), name, version), engine.manifest,
                                                  decode_workers))


def warmup_job(model: StreamingModel) -> ChunkJob:
    """One chunk of silence from a new stream: the warm-up run a version gets before it is served."""
    return ChunkJob(np.zeros(model.spec.chunk_samples, np.float32), -1, model.initial_state())


@dataclass(frozen=True)
class StreamOptions:
    sample_rate_hz: int  # of the audio the client sends
    encoding: Encoding = "pcm16"
    interim_results: bool = False
    words: bool = False
    use_lm: bool | None = None  # finals: None = the LM when the model has one
    max_alternatives: int = 1
    endpointing: EndpointOptions = field(default_factory=EndpointOptions)


@dataclass(frozen=True)
class StreamLimits:
    min_sample_rate_hz: int = 8000
    max_sample_rate_hz: int = 48000
    max_stream_s: float = 300.0
    max_message_s: float = 5.0  # audio in one message
    max_idle_s: float = 30.0  # longest wait for the client's next message
    pieces: PieceOptions = field(default_factory=PieceOptions)  # LM finals decoded while the audio streams


@dataclass(frozen=True)
class StreamResult:
    alternatives: tuple[Hypothesis, ...]  # best first; word times from the start of the stream
    is_final: bool
    stability: float  # interim: share of the text in completed words (greedy never revises those)
    start_s: float  # this utterance's start, from the start of the stream
    end_s: float  # audio covered by this result


def check_options(options: StreamOptions, limits: StreamLimits, model: StreamingModel) -> None:
    if not limits.min_sample_rate_hz <= options.sample_rate_hz <= limits.max_sample_rate_hz:
        raise invalid_argument(f"config.sample_rate_hertz is {options.sample_rate_hz}; streaming needs it set, "
                               f"{limits.min_sample_rate_hz}..{limits.max_sample_rate_hz} Hz")
    if not 0 <= options.max_alternatives <= 10:
        raise invalid_argument(f"config.max_alternatives is {options.max_alternatives}; allowed: 0..10")
    if options.use_lm and model.lm_decoder is None:
        raise invalid_argument(f"config.decoder asks for the language model, but {model.name} version "
                               f"{model.version} ships none")


def _stability(log_probs: np.ndarray, transcript: str) -> float:
    """Share of the greedy transcript in words followed by a word boundary (greedy never revises them)."""
    best = log_probs.argmax(axis=-1)
    emitted = best[(best != BLANK) & np.r_[True, best[1:] != best[:-1]]]  # the best path's characters
    spaces = np.flatnonzero(emitted == VOCAB.index(" "))
    if not transcript or not len(spaces):
        return 0.0
    done = decode_ids(emitted[: spaces[-1]]).split()  # words before the last boundary
    return min(1.0, len(" ".join(done)) / len(transcript))


class RecognitionStream:
    """One client's stream. Chunks go through `submit` (the batcher) one at a time, in order."""

    def __init__(self, model: StreamingModel, submit: Callable[[ChunkJob], Awaitable[ChunkOutput]],
                 options: StreamOptions, limits: StreamLimits, request_id: str) -> None:
        check_options(options, limits, model)
        self.model, self.options, self.limits, self.request_id = model, options, limits, request_id
        self._submit = submit
        spec = model.spec
        self._rate = spec.sample_rate_hz
        self._resampler = (None if options.sample_rate_hz == self._rate else
                           soxr.ResampleStream(options.sample_rate_hz, self._rate, 1, dtype="float32"))
        self._pending = np.zeros(0, np.float32)  # received, not yet in a chunk
        self._state = model.initial_state()
        self._samples = 0  # at the model's rate, received so far
        self.received_s = 0.0  # at the client's rate
        self._finished = False
        # current utterance: its first frame and the frames finalized so far
        self._seg_start = 0
        self._seg_rows: list[np.ndarray] = []
        self._next_frame = 0
        self._last_interim = ""
        self._finals = 0
        self._endpointer = EnergyEndpointer(options.endpointing, self._rate)
        self._cuts: list[int] = []  # utterance ends, as output-frame indices
        use_lm = model.lm_decoder is not None if options.use_lm is None else options.use_lm
        self._final_decoder = model.lm_decoder if use_lm and model.lm_decoder is not None else model.greedy
        self._pieces = self._new_pieces(0)

    def _new_pieces(self, start_frame: int) -> UtterancePieces:
        piece_options = self.limits.pieces if self._final_decoder is not self.model.greedy else PieceOptions(0.0)
        return UtterancePieces(self._final_decoder, self.model.spec.frame_s, start_frame, piece_options)

    def _decode_bytes(self, data: bytes) -> np.ndarray:
        width = 2 if self.options.encoding == "pcm16" else 4
        if len(data) % width:
            raise invalid_argument(f"audio has {len(data)} bytes; {self.options.encoding} samples are {width} "
                                   "bytes, so a message must hold whole samples")
        if width == 2:
            return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        samples = np.frombuffer(data, "<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise invalid_argument("audio contains NaN or infinite float32 samples")
        return samples

    async def feed(self, data: bytes) -> list[StreamResult]:
        """Take one message's audio; run every complete chunk; interim/final results that became ready."""
        if self._finished:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "audio after the end of the stream")
        samples = self._decode_bytes(data)
        seconds = len(samples) / self.options.sample_rate_hz
        if seconds > self.limits.max_message_s:
            raise invalid_argument(f"audio in one message is {seconds:.2f} s; send at most "
                                   f"{self.limits.max_message_s:g} s per message")
        self.received_s += seconds
        if self.received_s > self.limits.max_stream_s:
            raise out_of_range(f"the stream's audio passed {self.limits.max_stream_s:g} s, the most one stream "
                               "may carry; start a new stream")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return await self._take(samples)

    async def finish(self) -> list[StreamResult]:
        """End of stream: flush the engine, final results for what is left."""
        if self._finished:
            return []
        tail = (self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                if self._resampler is not None else np.zeros(0, np.float32))
        results = await self._take(tail)
        self._finished = True
        total = self._samples
        spec = self.model.spec
        calls_left = 2 + spec.lag_frames // spec.chunk_frames
        done = False
        while not done:
            if calls_left == 0:  # the engine never reported the flush done: a broken engine, not the client
                raise RuntimeError(f"{self.model.name} v{self.model.version}: flush did not finish")
            calls_left -= 1
            chunk = np.zeros(spec.chunk_samples, np.float32)
            chunk[: len(self._pending)] = self._pending
            self._pending = self._pending[:0]
            done = await self._run(chunk, total, results)
        results += await self._endpoint_results()
        if self._seg_rows or not self._finals:
            results.append(await self._final(self._next_frame))
        return results

    async def _take(self, samples: np.ndarray) -> list[StreamResult]:
        self._samples += len(samples)
        samples_per_frame = self.model.spec.frame_s * self._rate
        self._cuts += [math.floor(end / samples_per_frame) for end in self._endpointer.push(samples)]
        self._pending = np.concatenate([self._pending, samples])
        results: list[StreamResult] = []
        k = self.model.spec.chunk_samples
        while len(self._pending) >= k:
            chunk, self._pending = self._pending[:k], self._pending[k:]
            await self._run(chunk, -1, results)
        return results

    async def _run(self, chunk: np.ndarray, stream_samples: int, results: list[StreamResult]) -> bool:
        out = await self._submit(ChunkJob(chunk, stream_samples, self._state))
        self._state = out.state
        if len(out.log_probs):
            self._seg_rows.append(out.log_probs)
            self._next_frame = out.first_frame + len(out.log_probs)
            results += await self._endpoint_results()
            if not self._finished:
                self._pieces.offer(self._seg_rows, self._next_frame, self._cuts[0] if self._cuts else None)
            if self.options.interim_results and not self._finished:
                interim = self._interim()
                if interim is not None:
                    results.append(interim)
        return out.finished

    async def _endpoint_results(self) -> list[StreamResult]:
        results = []
        while self._cuts and self._next_frame >= self._cuts[0]:
            cut = self._cuts.pop(0)
            if cut > self._seg_start:
                results.append(await self._final(cut))
        return results

    def _segment(self, end: int) -> np.ndarray:
        rows = np.concatenate(self._seg_rows) if self._seg_rows else np.zeros((0, len(VOCAB)), np.float32)
        take = max(0, end - self._seg_start)
        rest = rows[take:]
        self._seg_rows = [rest] if len(rest) else []
        return rows[:take]

    def _interim(self) -> StreamResult | None:
        if not self._seg_rows:
            return None
        rows = np.concatenate(self._seg_rows)
        self._seg_rows = [rows]
        transcript = greedy_decode(rows)
        if not transcript or transcript == self._last_interim:
            return None
        self._last_interim = transcript
        frame_s = self.model.spec.frame_s
        [hyp] = self.model.greedy.decode(rows, frame_s, words=self.options.words, max_alternatives=1)
        return StreamResult((self._shift(hyp),), False, _stability(rows, transcript),
                            self._seg_start * frame_s, self._next_frame * frame_s)

    async def _final(self, end: int) -> StreamResult:
        """Final result for the utterance's frames up to `end`; the next utterance starts there."""
        rows = self._segment(end)
        alternatives = max(1, self.options.max_alternatives)
        hyps = await self._pieces.final(rows, end, words=self.options.words, max_alternatives=alternatives)
        frame_s = self.model.spec.frame_s
        result = StreamResult(tuple(hyps[:alternatives]), True, 1.0, self._seg_start * frame_s, end * frame_s)
        self._seg_start, self._last_interim = end, ""
        self._pieces = self._new_pieces(end)
        self._finals += 1
        return result

    def close(self) -> None:
        """The stream ended (or was abandoned): drop its background decode, if one is running."""
        self._pieces.cancel()

    def _shift(self, hyp: Hypothesis) -> Hypothesis:
        offset_s = self._seg_start * self.model.spec.frame_s
        words = tuple(WordTiming(w.word, w.start_s + offset_s, w.end_s + offset_s) for w in hyp.words)
        return Hypothesis(hyp.transcript, hyp.confidence, words)


class StreamTracker:
    """Streams in flight (`in_flight`, for metrics and tests) and a cap on them (RESOURCE_EXHAUSTED
    beyond it); one per server, shared by every streaming API."""

    def __init__(self, max_streams: int = 256) -> None:
        self.max_streams = max_streams
        self.in_flight = 0
        self.started = 0

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        if self.in_flight >= self.max_streams:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"server busy: {self.in_flight} streams in flight (the limit); retry with backoff")
        self.in_flight += 1
        self.started += 1
        try:
            yield
        finally:
            self.in_flight -= 1
