"""`RequestError`: a bad request found by plain (gRPC-free) validation code, with its status code.

Validation raises it before a request is queued; the servicer turns it into
`context.abort(error.code, error.message)` and the in-process CLI prints the message.
"""

from __future__ import annotations

import grpc


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
