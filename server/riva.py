"""NVIDIA Riva's ASR API over nui's models, so `nvidia-riva-client` works against nui unchanged.

    import riva.client
    asr = riva.client.ASRService(riva.client.Auth(uri="127.0.0.1:50051", use_ssl=False))
    config = riva.client.RecognitionConfig(language_code="en-US", encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                           max_alternatives=1, enable_word_time_offsets=True)
    riva.client.add_audio_file_specs_to_config(config, "clip.wav")
    response = asr.offline_recognize(open("clip.wav", "rb").read(), config)      # Recognize
    for r in asr.streaming_response_generator(riva.client.AudioChunkFileIterator("clip.wav", 1600),
                                              riva.client.StreamingRecognitionConfig(config=config,
                                                                                     interim_results=True)):
        ...                                                                       # StreamingRecognize

`Recognize` runs the offline models (`config.model` "" = speech_ctc) through their dynamic batcher;
`StreamingRecognize` runs the streaming models (`config.model` "" = speech_ctc_streaming) through
`server.streaming_service.StreamingRecognizer`; `GetRivaSpeechRecognitionConfig` lists both kinds.
Messages are nui's wire-compatible copy (proto/riva_asr.proto), served under Riva's service path
(server/wire.py).

Riva config fields, as nui honours them:
- language_code: "en-US" (or empty); anything else is INVALID_ARGUMENT (the models are English).
- encoding: LINEAR_PCM (a WAV header at the start of the audio is read and checked against
  sample_rate_hertz, as Riva does), FLAC / ENCODING_UNSPECIFIED (a container, Recognize only); MULAW,
  ALAW, OGGOPUS: INVALID_ARGUMENT.
- sample_rate_hertz 8000..48000 (resampled), audio_channel_count (downmixed for Recognize; streaming
  takes mono only), max_alternatives 0..10 (the decoders return one), enable_word_time_offsets (ms),
  interim_results, endpointing_config.stop_history (ms of silence that ends an utterance).
- Refused with INVALID_ARGUMENT, not silently dropped: speech_contexts (word boosting), speaker
  diarization, separate recognition per channel.
- Ignored: enable_automatic_punctuation and profanity_filter (transcripts are verbatim lower-case
  without punctuation), verbatim_transcripts, custom_configuration, the endpointing thresholds.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import grpc
import numpy as np

from proto import riva_asr_pb2 as rasr
from server.audio import AudioEncoding, AudioLimits
from server.endpointing import EndpointOptions
from server.errors import RequestError, checked_request_id, invalid_argument, not_found, status_of
from server.repository import resolve
from server.speech_ctc import DecodeOptions, Hypothesis
from server.speech_service import ServedModel
from server.streaming import RecognitionStream, StreamOptions, StreamResult
from server.streaming_service import StreamingRecognizer, StreamProtocol, StreamStart, failed_precondition
from server.wire import add_servicer, wire_name

logger = logging.getLogger(__name__)

SERVICE = rasr.DESCRIPTOR.services_by_name["RivaSpeechRecognition"]
RIVA_SERVICE = wire_name(SERVICE)  # "nvidia.riva.asr.RivaSpeechRecognition"
LANGUAGES = ("en-US",)
_CONTAINERS = (rasr.ENCODING_UNSPECIFIED, rasr.FLAC)


def _encoding_name(value: int) -> str:
    return {number: name for name, number in rasr.AudioEncoding.items()}.get(value, str(value))


def check_config(config: rasr.RecognitionConfig) -> None:
    """Refuse what nui cannot honour (see the module docstring)."""
    if config.language_code and config.language_code.lower() not in {c.lower() for c in LANGUAGES}:
        raise invalid_argument(f"config.language_code {config.language_code!r} is not supported; nui's speech "
                               f"models are English: use {' or '.join(LANGUAGES)}")
    if config.speech_contexts:
        raise invalid_argument("config.speech_contexts (word boosting) is not supported by nui's decoders")
    if config.diarization_config.enable_speaker_diarization:
        raise invalid_argument("config.diarization_config: speaker diarization is not supported")
    if config.enable_separate_recognition_per_channel:
        raise invalid_argument("config.enable_separate_recognition_per_channel is not supported; channels are "
                               "downmixed")
    if config.encoding not in (rasr.LINEAR_PCM, *_CONTAINERS):
        raise invalid_argument(f"config.encoding {_encoding_name(config.encoding)} is not supported; use "
                               "LINEAR_PCM or FLAC")
    if not 0 <= config.audio_channel_count <= 8:
        raise invalid_argument(f"config.audio_channel_count is {config.audio_channel_count}; allowed: 0..8")


def _words(h: Hypothesis) -> list[rasr.WordInfo]:
    return [rasr.WordInfo(word=w.word, start_time=round(1000 * w.start_s), end_time=round(1000 * w.end_s))
            for w in h.words]


def _alternatives(hyps: tuple[Hypothesis, ...]) -> list[rasr.SpeechRecognitionAlternative]:
    return [rasr.SpeechRecognitionAlternative(transcript=h.transcript, confidence=h.confidence, words=_words(h),
                                              language_code=[LANGUAGES[0]]) for h in hyps]


def _downmix_pcm16(audio: bytes, channels: int) -> bytes:
    frame = 2 * channels
    if len(audio) % frame:
        raise invalid_argument(f"audio has {len(audio)} bytes; LINEAR_PCM with {channels} channels needs a "
                               f"multiple of {frame}")
    x = np.frombuffer(audio, "<i2").reshape(-1, channels).astype(np.float32).mean(axis=1)
    return np.round(x).astype("<i2").tobytes()


def _wav_header(data: bytes) -> tuple[int, int, int, int]:
    """(sample rate, channels, bytes per sample, offset of the samples) of a WAV file's first bytes.

    Parsed by hand (RIFF chunks: id, little-endian size, body padded to even), so junk is always an
    INVALID_ARGUMENT rather than whatever a general-purpose reader raises."""
    def bad(why: str) -> RequestError:
        return invalid_argument(f"audio_content starts with a RIFF header that is not a PCM WAV header: {why}")

    if len(data) < 12 or data[8:12] != b"WAVE":
        raise bad("no WAVE tag")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos: pos + 4], int.from_bytes(data[pos + 4: pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise bad("short fmt chunk")
            audio_format, channels, rate_hz, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            fmt = (audio_format, channels, rate_hz, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise bad("data before fmt")
            audio_format, channels, rate_hz, bits = fmt
            if audio_format not in (1, 0xFFFE):  # PCM, or WAVE_FORMAT_EXTENSIBLE (checked by bits below)
                raise bad(f"format tag {audio_format} is not PCM")
            return rate_hz, channels, bits // 8, body
        pos = body + size + (size & 1)
    raise bad("the first message ends before the data chunk starts")


class _RivaStream:
    """Riva's spelling of one stream (the first audio message may start with a WAV header)."""

    def __init__(self) -> None:
        self.first_audio = True
        self.rate_hz = 0
        self.request_id = rasr.RequestId()

    def start(self, request: rasr.StreamingRecognizeRequest) -> StreamStart:
        if request.WhichOneof("streaming_request") != "streaming_config":
            raise failed_precondition("the first StreamingRecognizeRequest must carry streaming_config "
                                      "(audio_content comes after)")
        self.request_id.CopyFrom(request.id)
        request_id = checked_request_id(request.id.value)
        config = request.streaming_config.config
        check_config(config)
        if config.encoding != rasr.LINEAR_PCM:
            raise invalid_argument(f"streaming_config.config.encoding {_encoding_name(config.encoding)} cannot be "
                                   "streamed; use LINEAR_PCM")
        if config.audio_channel_count > 1:
            raise invalid_argument(f"streaming_config.config.audio_channel_count is {config.audio_channel_count}; "
                                   "streaming takes mono audio")
        self.rate_hz = config.sample_rate_hertz
        ep = config.endpointing_config
        silence_ms = float(ep.stop_history) if config.HasField("endpointing_config") and ep.stop_history > 0 else 800.0
        options = StreamOptions(sample_rate_hz=config.sample_rate_hertz, encoding="pcm16",
                                interim_results=request.streaming_config.interim_results,
                                words=config.enable_word_time_offsets, max_alternatives=config.max_alternatives,
                                endpointing=EndpointOptions(silence_ms=silence_ms))
        return StreamStart(config.model, 0, options, request_id)

    def audio(self, request: rasr.StreamingRecognizeRequest) -> bytes:
        if request.WhichOneof("streaming_request") == "streaming_config":
            raise failed_precondition("streaming_config may only be sent in the first StreamingRecognizeRequest")
        data = request.audio_content
        if self.first_audio and data:
            self.first_audio = False
            if data[:4] == b"RIFF":
                rate_hz, channels, width, offset = _wav_header(data)
                if (rate_hz, channels, width) != (self.rate_hz, 1, 2):
                    raise invalid_argument(
                        f"the audio's WAV header says {rate_hz} Hz, {channels} channel(s), {8 * width}-bit; "
                        f"streaming_config.config says {self.rate_hz} Hz, and streaming takes mono 16-bit PCM")
                data = data[offset:]
        return data

    def respond(self, results: list[StreamResult], stream: RecognitionStream
                ) -> list[rasr.StreamingRecognizeResponse]:
        return [rasr.StreamingRecognizeResponse(
            results=[rasr.StreamingRecognitionResult(
                alternatives=_alternatives(r.alternatives), is_final=r.is_final, stability=r.stability,
                channel_tag=1, audio_processed=stream.received_s)],
            id=self.request_id) for r in results]


class RivaASRServicer:
    """The three Riva ASR methods over nui's offline and streaming models."""

    def __init__(self, offline: Mapping[str, Mapping[int, ServedModel]], limits: AudioLimits,
                 streaming: StreamingRecognizer) -> None:
        self.offline = offline
        self.limits = limits
        self.streaming = streaming

    async def Recognize(self, request: rasr.RecognizeRequest, context: grpc.aio.ServicerContext
                        ) -> rasr.RecognizeResponse:
        started = time.monotonic()
        request_id = "-"
        try:
            request_id = checked_request_id(request.id.value)
            response = await self._recognize(request, request_id, context.time_remaining())
        except Exception as e:  # every failure becomes a status below; abort() must run outside this block
            code, message = status_of(e, request_id)
        else:
            logger.debug("riva request %s: OK, %d audio bytes, %.1f ms", request_id, len(request.audio),
                         1e3 * (time.monotonic() - started))
            return response
        logger.info("riva request %s: %s, %d audio bytes", request_id, code.name, len(request.audio))
        await context.abort(code, message)
        raise AssertionError("context.abort returned")

    async def _recognize(self, request: rasr.RecognizeRequest, request_id: str,
                         time_remaining_s: float | None) -> rasr.RecognizeResponse:
        deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
        config = request.config
        check_config(config)
        served = resolve(self.offline, config.model, 0)
        served.batcher.check_admission(deadline)  # shed before decoding: a refusal must cost next to nothing
        audio, rate_hz = request.audio, config.sample_rate_hertz
        if config.encoding in _CONTAINERS or audio[:4] == b"RIFF":
            encoding = AudioEncoding.AUTO
        else:
            encoding = AudioEncoding.LINEAR_PCM
            if config.audio_channel_count > 1:
                audio = _downmix_pcm16(audio, config.audio_channel_count)
        options = DecodeOptions(words=config.enable_word_time_offsets, max_alternatives=config.max_alternatives)
        utterance = await asyncio.to_thread(served.model.prepare, audio, encoding, rate_hz, options, self.limits,
                                            request_id)
        recognition = await served.batcher.submit(utterance, deadline=deadline)
        return rasr.RecognizeResponse(
            results=[rasr.SpeechRecognitionResult(alternatives=_alternatives(recognition.alternatives),
                                                  channel_tag=1, audio_processed=recognition.audio_duration_s)],
            id=request.id)

    async def StreamingRecognize(self, request_iterator: AsyncIterable[rasr.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[rasr.StreamingRecognizeResponse]:
        riva = _RivaStream()
        protocol = StreamProtocol(riva.start, riva.audio, riva.respond)
        async for response in self.streaming.run(request_iterator, context, protocol):
            yield response

    async def GetRivaSpeechRecognitionConfig(self, request: rasr.RivaSpeechRecognitionConfigRequest,
                                             context: grpc.aio.ServicerContext
                                             ) -> rasr.RivaSpeechRecognitionConfigResponse:
        configs = []
        for name, versions in sorted(self.offline.items()):
            model = versions[max(versions)].model
            configs.append(rasr.RivaSpeechRecognitionConfigResponse.Config(model_name=name, parameters={
                "type": "offline", "streaming": "false", "language_code": LANGUAGES[0],
                "sample_rate": str(model.spec.sample_rate_hz), "version": str(model.version),
                "decoder": "beam_lm" if model.has_lm else "greedy"}))
        for name, sversions in sorted(self.streaming.served.items()):
            smodel = sversions[max(sversions)].model
            configs.append(rasr.RivaSpeechRecognitionConfigResponse.Config(model_name=name, parameters={
                "type": "online", "streaming": "true", "language_code": LANGUAGES[0],
                "sample_rate": str(smodel.spec.sample_rate_hz), "version": str(smodel.version),
                "decoder": "beam_lm" if smodel.lm_decoder is not None else "greedy",
                "chunk_size": f"{smodel.spec.chunk_samples / smodel.spec.sample_rate_hz:g}"}))
        if request.model_name:
            configs = [c for c in configs if c.model_name == request.model_name]
            if not configs:
                code, message = status_of(not_found(f"model_name {request.model_name!r} is not loaded"), "-")
                await context.abort(code, message)
        return rasr.RivaSpeechRecognitionConfigResponse(model_config=configs)


def add_riva_servicer(servicer: RivaASRServicer, server: grpc.aio.Server) -> str:
    """Serve `servicer` under Riva's service path; returns the service name (for health)."""
    return add_servicer(SERVICE, servicer, server)
