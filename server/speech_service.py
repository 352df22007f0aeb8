"""The `nui.v1.Speech` gRPC servicer: validate → enqueue on the model's batcher → respond.

The servicer only translates: proto request → plain values (`request_options`), the work is done by
`SpeechCTCModel.prepare` (before the queue) and `SpeechCTCModel.run_batch` (inside the batcher), and
`to_response` builds the reply. Errors end as `context.abort(code, message)`; unexpected ones as
INTERNAL with a generic message, the details logged under the request id. Logs carry sizes, codes and
request ids only, never audio or transcripts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from proto import speech_pb2, speech_pb2_grpc
from server.audio import AudioEncoding, AudioLimits
from server.batcher import DynamicBatcher
from server.errors import checked_request_id, invalid_argument, status_of
from server.repository import resolve
from server.speech_ctc import DecodeOptions, Recognition, SpeechCTCModel, Utterance

logger = logging.getLogger(__name__)


_ENCODINGS = {
    speech_pb2.ENCODING_UNSPECIFIED: AudioEncoding.AUTO,
    speech_pb2.LINEAR_PCM: AudioEncoding.LINEAR_PCM,
}
_USE_LM = {speech_pb2.DECODER_UNSPECIFIED: None, speech_pb2.DECODER_GREEDY: False,
           speech_pb2.DECODER_BEAM_LM: True}


@dataclass(frozen=True)
class ServedModel:
    model: SpeechCTCModel
    batcher: DynamicBatcher[Utterance, Recognition]


def request_options(config: speech_pb2.RecognitionConfig) -> tuple[AudioEncoding, int, DecodeOptions]:
    """(encoding, sample rate or 0, decode options) of a request config; RequestError on unknown enums."""
    encoding = _ENCODINGS.get(config.encoding)
    if encoding is None:
        raise invalid_argument(f"config.encoding {config.encoding} is not an AudioEncoding; allowed: "
                               "ENCODING_UNSPECIFIED (WAV/FLAC/OGG), LINEAR_PCM")
    if config.decoder not in _USE_LM:
        raise invalid_argument(f"config.decoder {config.decoder} is not a Decoder; allowed: "
                               "DECODER_UNSPECIFIED, DECODER_GREEDY, DECODER_BEAM_LM")
    options = DecodeOptions(words=config.enable_word_time_offsets, use_lm=_USE_LM[config.decoder],
                            max_alternatives=config.max_alternatives)
    return encoding, config.sample_rate_hertz, options


def request_id_of(request: speech_pb2.RecognizeRequest) -> str:
    return checked_request_id(request.request_id)


def to_response(recognition: Recognition, model: str, version: int, request_id: str
                ) -> speech_pb2.RecognizeResponse:
    result = speech_pb2.SpeechRecognitionResult(alternatives=[
        speech_pb2.SpeechRecognitionAlternative(
            transcript=hyp.transcript, confidence=hyp.confidence,
            words=[speech_pb2.WordInfo(word=w.word, start_s=w.start_s, end_s=w.end_s) for w in hyp.words])
        for hyp in recognition.alternatives])
    return speech_pb2.RecognizeResponse(results=[result], audio_duration_s=recognition.audio_duration_s,
                                        model=model, model_version=version, request_id=request_id)


class SpeechServicer(speech_pb2_grpc.SpeechServicer):
    """`Recognize` over the loaded models, {name: {version: ServedModel}}."""

    def __init__(self, served: Mapping[str, Mapping[int, ServedModel]], limits: AudioLimits) -> None:
        self._served = served
        self._limits = limits

    async def Recognize(self, request: speech_pb2.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> speech_pb2.RecognizeResponse:
        started = time.monotonic()
        request_id = "-"  # until the caller's id is checked
        try:
            request_id = request_id_of(request)
            response = await self._recognize(request, request_id, context.time_remaining())
        except Exception as e:  # every failure becomes a status below; abort() must run outside this block
            code, message = status_of(e, request_id)
        else:
            logger.debug("request %s: OK, %d audio bytes, %.2f s audio, %.1f ms", request_id,
                         len(request.audio), response.audio_duration_s, 1e3 * (time.monotonic() - started))
            return response
        logger.info("request %s: %s, %d audio bytes, %.1f ms", request_id, code.name, len(request.audio),
                    1e3 * (time.monotonic() - started))
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # abort always raises

    async def _recognize(self, request: speech_pb2.RecognizeRequest, request_id: str,
                         time_remaining_s: float | None) -> speech_pb2.RecognizeResponse:
        deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
        served = resolve(self._served, request.config.model, request.config.model_version)
        encoding, rate_hz, options = request_options(request.config)
        served.batcher.check_admission(deadline)  # shed before decoding: a refusal must cost next to nothing
        utterance = await asyncio.to_thread(served.model.prepare, request.audio, encoding, rate_hz, options,
                                            self._limits, request_id)
        recognition = await served.batcher.submit(utterance, deadline=deadline)
        return to_response(recognition, served.model.name, served.model.version, request_id)
