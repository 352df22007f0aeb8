"""`RequestError`: a bad request found by plain (gRPC-free) validation code, with its status code.

Validation raises it before a request is queued; the servicer turns it into
`context.abort(error.code, error.message)` and the in-process CLI prints the message.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from server.batcher import BatcherClosedError, DeadlineExceededError, QueueFullError

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 128
# Status messages quote the caller's values; a client refuses trailers over its metadata limit (8 KiB by
# default in grpc) and reports RESOURCE_EXHAUSTED instead of the status, so messages are capped.
MAX_MESSAGE_CHARS = 1000


class RequestError(Exception):
    """The request cannot be served as sent; `message` names the field, the value and what is allowed."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def out_of_range(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.OUT_OF_RANGE, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def checked_request_id(request_id: str) -> str:
    """The caller's request id (short, printable) or a fresh one when empty."""
    if not request_id:
        return uuid.uuid4().hex[:16]
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise invalid_argument(f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters "
                               f"(got {len(request_id)})")
    return request_id


def status_of(error: Exception, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for a failed request; unexpected errors are logged and answered INTERNAL."""
    if isinstance(error, RequestError):
        message = error.message
        return error.code, message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."
    if isinstance(error, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {error}; retry with backoff"
    if isinstance(error, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
    if isinstance(error, BatcherClosedError):
        return grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another server"
    logger.error("request %s: internal error", request_id, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
