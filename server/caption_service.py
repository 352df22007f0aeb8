"""The `nui.v1.Captioner` gRPC servicer: validate → enqueue on the model's batchers → respond.

The servicer only translates: proto request → plain values, the work is done by
`CaptionerModel.prepare` (before any queue, in a worker thread: image decoding is CPU work) and
`ServedCaptioner.caption` (encoder batch, then batched decoder steps), and `to_response` builds the
reply. Errors end as `context.abort(code, message)`; unexpected ones as INTERNAL with a generic message,
the details logged under the request id. Logs carry sizes, codes and request ids, never images or
captions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import grpc

from proto import caption_pb2, caption_pb2_grpc
from server.captioner import DEFAULT_MODEL, CaptionOptions, CaptionResult, ImageLimits, ServedCaptioner
from server.errors import checked_request_id, status_of
from server.repository import resolve

logger = logging.getLogger(__name__)

SERVICE = caption_pb2.DESCRIPTOR.services_by_name["Captioner"].full_name  # "nui.v1.Captioner"


def request_options(config: caption_pb2.CaptionConfig) -> CaptionOptions:
    return CaptionOptions(beam_size=config.beam_size, n_best=config.n_best, max_length=config.max_length,
                          length_penalty=config.length_penalty)


def to_response(result: CaptionResult, model: str, version: int, request_id: str,
                total_s: float) -> caption_pb2.CaptionResponse:
    v = result.domain
    domain = None if v is None else caption_pb2.DomainCheck(in_domain=v.in_domain, score=v.score,
                                                            threshold=v.threshold, label=v.label,
                                                            label_prob=v.label_prob)
    return caption_pb2.CaptionResponse(
        domain=domain,
        captions=[caption_pb2.Caption(text=c.text, score=c.score, log_prob=c.log_prob, finished=c.finished)
                  for c in result.captions],
        model=model, model_version=version, request_id=request_id, image_width=result.width,
        image_height=result.height,
        timing=caption_pb2.CaptionTiming(decode_image_ms=1e3 * result.decode_image_s,
                                         encoder_ms=1e3 * result.encoder_s, decoder_ms=1e3 * result.decoder_s,
                                         decoder_steps=result.decoder_steps, total_ms=1e3 * total_s))


class CaptionServicer(caption_pb2_grpc.CaptionerServicer):
    """`Caption` over the loaded models, {name: {version: ServedCaptioner}} (may change while serving)."""

    def __init__(self, served: Mapping[str, Mapping[int, ServedCaptioner]], limits: ImageLimits) -> None:
        self._served = served
        self._limits = limits

    async def Caption(self, request: caption_pb2.CaptionRequest,
                      context: grpc.aio.ServicerContext) -> caption_pb2.CaptionResponse:
        started = time.monotonic()
        request_id = "-"  # until the caller's id is checked
        try:
            request_id = checked_request_id(request.request_id)
            response = await self._caption(request, request_id, context.time_remaining(), started)
        except Exception as e:  # every failure becomes a status below; abort() must run outside this block
            code, message = status_of(e, request_id)
        else:
            logger.debug("request %s: OK, %d image bytes, %d steps, %.1f ms", request_id, len(request.image),
                         response.timing.decoder_steps, response.timing.total_ms)
            return response
        logger.info("request %s: %s, %d image bytes, %.1f ms", request_id, code.name, len(request.image),
                    1e3 * (time.monotonic() - started))
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # abort always raises

    async def _caption(self, request: caption_pb2.CaptionRequest, request_id: str,
                       time_remaining_s: float | None, started: float) -> caption_pb2.CaptionResponse:
        deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
        served = resolve(self._served, request.config.model or DEFAULT_MODEL, request.config.model_version)
        job = await asyncio.to_thread(served.model.prepare, request.image, request_options(request.config),
                                      self._limits, request_id)
        result = await served.caption(job, deadline=deadline)
        return to_response(result, served.model.name, served.model.version, request_id,
                           time.monotonic() - started)
