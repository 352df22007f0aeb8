"""The server interceptor every RPC passes: optional bearer-token auth, metrics and one access-log line.

- Auth (`nui serve --auth-token-file FILE`): calls must carry `authorization: Bearer <token>` metadata,
  else UNAUTHENTICATED; `grpc.health.v1.Health` stays open so load balancers can probe.
- Metrics: `nui_requests_total{service,method,code}` and the duration histogram (server/metrics.py).
- Access log (logger `server.access`): service, method, code, duration; never payloads. OK at DEBUG,
  other codes at INFO. With `--log-format json` the fields come as a JSON object under "rpc".
- Undecodable messages: a request (or a stream message) that is not a valid protobuf message of the
  method's type is answered INVALID_ARGUMENT; left to grpc it would be UNKNOWN with a traceback in the
  log for a unary call, and INTERNAL from the servicer for a stream message.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.errors import invalid_argument
from server.metrics import ServerMetrics

access_logger = logging.getLogger("server.access")

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})  # reachable without a token
AUTH_HEADER = "authorization"


def split_method(full_method: str) -> tuple[str, str]:
    """"/pkg.Service/Method" -> ("pkg.Service", "Method")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class _Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The handler's deserializer, returning `_Undecodable` instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # protobuf's DecodeError, or whatever a custom deserializer raises
            return _Undecodable(e)
    return parse


def _undecodable_message(service: str, method: str, request: _Undecodable) -> str:
    return (f"the request is not a valid protobuf message for {service}/{method} "
            f"({type(request.error).__name__}); check the client's .proto against the server's")


async def _decoded(requests: AsyncIterator[Any], service: str, method: str) -> AsyncIterator[Any]:
    """A stream's messages; the first undecodable one raises RequestError (INVALID_ARGUMENT) in the servicer."""
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise invalid_argument(_undecodable_message(service, method, request))
        yield request


def _gone_client(error: BaseException, context: grpc.aio.ServicerContext) -> BaseException:
    """A cancellation in place of grpc's ExecuteBatchError when the call had already ended (its deadline
    passed or the client cancelled) before the status went out: grpc's asyncio server raises it from
    abort() when the client's end has not been noted yet (a race; under overload with short deadlines it
    otherwise logs an ERROR with a traceback per call, bench/fuzz.py --overload-s). Other errors: as is."""
    if type(error).__name__ != "ExecuteBatchError":
        return error
    remaining = context.time_remaining()
    if context.cancelled() or (remaining is not None and remaining <= 0):
        return asyncio.CancelledError("the call ended before its status was sent")
    return error


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each handler: checks the token, then counts, times and logs the call."""

    def __init__(self, metrics: ServerMetrics, auth_token: str | None = None) -> None:
        self._metrics = metrics
        self._expected = f"Bearer {auth_token}".encode() if auth_token else None

    def _authorized(self, details: grpc.HandlerCallDetails, service: str) -> bool:
        if self._expected is None or service in OPEN_SERVICES:
            return True
        for key, value in details.invocation_metadata or ():
            if key == AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        service, method = split_method(details.method)
        authorized = self._authorized(details, service)
        done = self._recorder(service, method)

        async def check(context: grpc.aio.ServicerContext, request: Any) -> None:
            if not authorized:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "missing or wrong 'authorization: Bearer <token>' metadata")
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable_message(service, method, request))

        streamed_requests = bool(handler.stream_unary or handler.stream_stream)
        deserializer = _lenient(handler.request_deserializer)

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, error = time.monotonic(), None
                try:
                    await check(context, request)
                    return await inner(_decoded(request, service, method) if streamed_requests else request,
                                       context)
                except BaseException as e:
                    error = _gone_client(e, context)
                    if error is e:
                        raise
                    raise error from e
                finally:
                    done(_final_code(context, error), time.monotonic() - started)

            make = (grpc.unary_unary_rpc_method_handler if handler.unary_unary
                    else grpc.stream_unary_rpc_method_handler)
            return make(unary_response, request_deserializer=deserializer,
                        response_serializer=handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started, error = time.monotonic(), None
            try:
                await check(context, request)
                result = inner_stream(_decoded(request, service, method) if streamed_requests else request, context)
                if inspect.isasyncgen(result):
                    async for reply in result:
                        yield reply
                else:  # a handler that writes with context.write()
                    await result
            except BaseException as e:
                error = _gone_client(e, context)
                if error is e:
                    raise
                raise error from e
            finally:
                done(_final_code(context, error), time.monotonic() - started)

        make_stream = (grpc.unary_stream_rpc_method_handler if handler.unary_stream
                       else grpc.stream_stream_rpc_method_handler)
        return make_stream(stream_response, request_deserializer=deserializer,
                           response_serializer=handler.response_serializer)

    def _recorder(self, service: str, method: str) -> Callable[[grpc.StatusCode, float], None]:
        def done(code: grpc.StatusCode, duration_s: float) -> None:
            self._metrics.rpc_done(service, method, code.name, duration_s)
            fields = {"service": service, "method": method, "code": code.name,
                      "duration_ms": round(1e3 * duration_s, 3)}
            level = logging.DEBUG if code == grpc.StatusCode.OK else logging.INFO
            access_logger.log(level, "%s/%s %s %.1f ms", service, method, code.name, 1e3 * duration_s,
                              extra={"rpc": fields})
        return done
