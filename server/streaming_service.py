"""`nui.v1.Speech/StreamingRecognize`, and the stream driver it shares with the Riva API (server/riva.py).

`StreamingRecognizer.run` drives one bidirectional stream whatever its protocol: the first message is
parsed into a `StreamStart` (model, options, request id) by a protocol function, later ones give audio
bytes, and results are turned into protocol responses; the work is done by `server.streaming`
(`RecognitionStream` over the model's batcher). Protocol errors end the call with
FAILED_PRECONDITION / INVALID_ARGUMENT naming the field; a client that cancels frees the stream's state
(the handler is cancelled and nothing refers to the stream any more). `tracker.in_flight` counts
streams in flight.

    grpcurl -plaintext -d @ 127.0.0.1:50051 nui.v1.Speech/StreamingRecognize   # see proto/speech.proto
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from proto import speech_pb2
from server.audio import AudioLimits
from server.endpointing import EndpointOptions
from server.errors import RequestError, checked_request_id, invalid_argument, not_found, out_of_range, status_of
from server.repository import resolve
from server.speech_service import ServedModel, SpeechServicer
from server.streaming import (
    DEFAULT_MODEL,
    RecognitionStream,
    ServedStreamingModel,
    StreamLimits,
    StreamOptions,
    StreamResult,
    StreamTracker,
)

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def failed_precondition(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, message)


@dataclass(frozen=True)
class StreamStart:
    model: str  # "" means the default streaming model
    version: int  # 0 means the highest
    options: StreamOptions
    request_id: str


@dataclass(frozen=True)
class StreamProtocol(Generic[Req, Resp]):
    """How one API spells a stream: parse the first message, take audio from later ones, build responses."""

    start: Callable[[Req], StreamStart]  # RequestError when the first message is not a valid config
    audio: Callable[[Req], bytes]  # RequestError when a later message is not audio
    respond: Callable[[list[StreamResult], RecognitionStream], list[Resp]]


class StreamingRecognizer:
    """Runs streams over the loaded streaming models, {name: {version: ServedStreamingModel}}."""

    def __init__(self, served: Mapping[str, Mapping[int, ServedStreamingModel]], limits: StreamLimits,
                 tracker: StreamTracker,
                 observe_stream: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
                 ) -> None:
        self.served = served
        self.limits = limits
        self.tracker = tracker
        self.observe_stream = observe_stream  # e.g. a metrics gauge of open streams

    def resolve(self, model: str, version: int) -> ServedStreamingModel:
        if not self.served:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,  # as server/availability.py answers before a call gets here
                "no streaming speech model is loaded on this server; export a unidirectional checkpoint "
                "(e.g. the small-streaming preset) with `nui export speech` into the repository, as model "
                f"{DEFAULT_MODEL!r}")
        try:
            return resolve(self.served, model or DEFAULT_MODEL, version)
        except RequestError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
            raise not_found(f"{e.message} (streaming models)") from None

    async def _next(self, messages: AsyncIterator[Req]) -> Req | None:
        """The client's next message, None at its half-close; OUT_OF_RANGE when it is idle too long."""
        try:
            async with asyncio.timeout(self.limits.max_idle_s):
                return await anext(messages)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise out_of_range(f"no message for {self.limits.max_idle_s:g} s; send audio (or silence) "
                               "continuously and half-close the stream when done") from None

    async def run(self, requests: AsyncIterable[Req], context: grpc.aio.ServicerContext,
                  protocol: StreamProtocol[Req, Resp]) -> AsyncIterator[Resp]:
        started = time.monotonic()
        request_id = "-"
        stream: RecognitionStream | None = None
        try:
            with self.tracker.track(), self.observe_stream(), contextlib.ExitStack() as on_version:
                messages = aiter(requests)
                first = await self._next(messages)
                if first is None:
                    raise failed_precondition("the stream ended before its first message, which must carry "
                                              "the config")
                start = protocol.start(first)
                request_id = start.request_id
                served = self.resolve(start.model, start.version)
                on_version.enter_context(served.stream())  # a retired version waits for this stream's end
                stream = RecognitionStream(served.model, served.batcher.submit, start.options, self.limits,
                                           request_id)
                on_version.callback(stream.close)  # first: a background decode left is dropped
                while (request := await self._next(messages)) is not None:
                    results = await stream.feed(protocol.audio(request))
                    for response in protocol.respond(results, stream):
                        yield response
                for response in protocol.respond(await stream.finish(), stream):
                    yield response
        except Exception as e:  # every failure becomes a status below; abort() must run outside this block
            code, message = status_of(e, request_id)
        else:
            logger.debug("stream %s: OK, %.2f s audio, %.1f ms", request_id,
                         stream.received_s if stream else 0.0, 1e3 * (time.monotonic() - started))
            return
        logger.info("stream %s: %s after %.2f s audio", request_id, code.name,
                    stream.received_s if stream else 0.0)
        await context.abort(code, message)


# nui.v1.Speech's spelling of a stream.

_ENCODINGS = {speech_pb2.LINEAR_PCM: "pcm16", speech_pb2.LINEAR_FLOAT32: "float32"}
_USE_LM = {speech_pb2.DECODER_UNSPECIFIED: None, speech_pb2.DECODER_GREEDY: False,
           speech_pb2.DECODER_BEAM_LM: True}


def _start(request: speech_pb2.StreamingRecognizeRequest) -> StreamStart:
    if request.WhichOneof("streaming_request") != "config":
        raise failed_precondition("the first StreamingRecognizeRequest must carry `config` (audio comes after)")
    request_id = checked_request_id(request.request_id)
    config = request.config
    encoding = _ENCODINGS.get(config.encoding)
    if encoding is None:
        name = {n: k for k, n in speech_pb2.AudioEncoding.items()}.get(config.encoding, config.encoding)
        raise invalid_argument(f"config.encoding {name} cannot be streamed; use LINEAR_PCM (int16) or "
                               "LINEAR_FLOAT32")
    if config.decoder not in _USE_LM:
        raise invalid_argument(f"config.decoder {config.decoder} is not a Decoder")
    ep = config.endpointing
    endpointing = EndpointOptions(enabled=not ep.disabled, silence_ms=float(ep.silence_ms or 800),
                                  threshold_dbfs=float(ep.threshold_dbfs or -40.0))
    options = StreamOptions(sample_rate_hz=config.sample_rate_hertz, encoding=encoding,  # type: ignore[arg-type]
                            interim_results=config.interim_results, words=config.enable_word_time_offsets,
                            use_lm=_USE_LM[config.decoder], max_alternatives=config.max_alternatives,
                            endpointing=endpointing)
    return StreamStart(config.model, config.model_version, options, request_id)


def _audio(request: speech_pb2.StreamingRecognizeRequest) -> bytes:
    if request.WhichOneof("streaming_request") == "config":
        raise failed_precondition("`config` may only be sent in the first StreamingRecognizeRequest")
    return request.audio


def _respond(results: list[StreamResult], stream: RecognitionStream
             ) -> list[speech_pb2.StreamingRecognizeResponse]:
    return [speech_pb2.StreamingRecognizeResponse(
        results=[speech_pb2.SpeechRecognitionResult(
            alternatives=[speech_pb2.SpeechRecognitionAlternative(
                transcript=h.transcript, confidence=h.confidence,
                words=[speech_pb2.WordInfo(word=w.word, start_s=w.start_s, end_s=w.end_s) for w in h.words])
                for h in r.alternatives],
            is_final=r.is_final, stability=r.stability, result_start_s=r.start_s, result_end_s=r.end_s)],
        audio_processed_s=stream.received_s, model=stream.model.name, model_version=stream.model.version,
        request_id=stream.request_id) for r in results]


class StreamingSpeechServicer(SpeechServicer):
    """`nui.v1.Speech`: `Recognize` (offline models) and `StreamingRecognize` (streaming models)."""

    def __init__(self, served: Mapping[str, Mapping[int, ServedModel]], limits: AudioLimits,
                 streaming: StreamingRecognizer) -> None:
        super().__init__(served, limits)
        self.streaming = streaming

    async def StreamingRecognize(self, request_iterator: AsyncIterable[speech_pb2.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[speech_pb2.StreamingRecognizeResponse]:
        protocol = StreamProtocol(_start, _audio, _respond)
        async for response in self.streaming.run(request_iterator, context, protocol):
            yield response
