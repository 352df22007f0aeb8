"""Which models each RPC needs, and what callers see while none is loaded.

    availability = Availability(repo, poll_repository_s, store.tables)
    availability.add("nui.v1.Captioner", Needs({"Caption": "captioner"}))
    grpc.aio.server(interceptors=[..., ModelGate(availability)])
    availability.serving("nui.v1.Captioner")  # -> the service's grpc.health.v1 status

Every service is registered at start-up whatever the repository holds, because grpc cannot add a
service to a running server: a model that appears later (copied in and found by `--poll-repository-s`,
or loaded with KServe RepositoryModelLoad) is served through its API at once. Until a version of the
task a method runs is loaded and warmed up, the method answers UNAVAILABLE with a message naming the
model it looks for and the repository, and the service's health is NOT_SERVING; SERVING once a version
is in, NOT_SERVING again when its last version is unloaded or removed from disk.

Why UNAVAILABLE, not FAILED_PRECONDITION: gRPC defines UNAVAILABLE as a transient condition that a
client may retry with backoff, FAILED_PRECONDITION as one it must not retry until the system is fixed.
Here the model arrives with no action of the client (a poll, another client's RepositoryModelLoad);
retry policies (service config `retryableStatusCodes`), load balancers and health's NOT_SERVING all read
UNAVAILABLE as "try later or elsewhere". Triton answers UNAVAILABLE to a request for a model it has not
loaded (triton-inference-server/server#2419), and STYLE.md maps "model not loaded" to UNAVAILABLE.
KServe's methods name their model in each request and keep answering NOT_FOUND for one that is not loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.captioner import DEFAULT_MODEL as CAPTIONER_MODEL
from server.captioner import TASK as CAPTIONER_TASK
from server.diagnosis import DEFAULT_MODEL as DIAGNOSIS_MODEL
from server.diagnosis import TASK as DIAGNOSIS_TASK
from server.interceptors import split_method
from server.repository import DEFAULT_MODEL as SPEECH_MODEL
from server.speech_ctc import TASK as SPEECH_TASK
from server.streaming import DEFAULT_MODEL as STREAMING_MODEL
from server.streaming import TASK as STREAMING_TASK

# The model a request naming none gets, per task: what the UNAVAILABLE message tells the operator to add.
DEFAULT_MODELS = {SPEECH_TASK: SPEECH_MODEL, STREAMING_TASK: STREAMING_MODEL, DIAGNOSIS_TASK: DIAGNOSIS_MODEL,
                  CAPTIONER_TASK: CAPTIONER_MODEL}


@dataclass(frozen=True)
class Needs:
    """What one service needs loaded. `methods`, {method: task}: each answers UNAVAILABLE while its task
    has no version loaded (methods not listed need none). The service is SERVING while any task of
    `serving_tasks` (default: its methods' tasks) has a version loaded; no task at all: always."""

    methods: Mapping[str, str]
    serving_tasks: tuple[str, ...] = ()

    def tasks(self) -> tuple[str, ...]:
        return self.serving_tasks or tuple(dict.fromkeys(self.methods.values()))


class Availability:
    """The services' needs against the store's tables ({task: {name: {version: served}}}, changed in place)."""

    def __init__(self, repo: Path, poll_repository_s: float, tables: Mapping[str, Mapping[str, Any]]) -> None:
        self.repo = Path(repo)
        self.poll_repository_s = poll_repository_s
        self.tables = tables
        self.services: dict[str, Needs] = {}

    def add(self, service: str, needs: Needs) -> None:
        self.services[service] = needs

    def _loaded(self, task: str) -> bool:
        return bool(self.tables.get(task))

    def serving(self, service: str) -> bool:
        tasks = self.services[service].tasks()
        return not tasks or any(self._loaded(task) for task in tasks)

    def missing(self, service: str, method: str) -> str | None:
        """Why `service/method` cannot run now (UNAVAILABLE's message), None when it can."""
        needs = self.services.get(service)
        task = None if needs is None else needs.methods.get(method)
        if task is None or self._loaded(task):
            return None
        model = DEFAULT_MODELS.get(task, task)
        then = (f"the server looks for new versions every {self.poll_repository_s:g} s"
                if self.poll_repository_s > 0 else
                "then load it with KServe RepositoryModelLoad, or restart the server (or run it with "
                "--poll-repository-s to pick new versions up)")
        return (f"{service}/{method} needs a {task} model and none is loaded: the repository {self.repo} holds "
                f"no loaded {task} version (a request naming no model uses {model!r}). Export one to "
                f"{self.repo / model}/<version>/; {then}")


class ModelGate(grpc.aio.ServerInterceptor):
    """Answers UNAVAILABLE (see the module docstring) for methods whose task has no model loaded."""

    def __init__(self, availability: Availability) -> None:
        self._availability = availability

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        message = None if handler is None else self._availability.missing(*split_method(details.method))
        if message is None:
            return handler
        return _refusing(handler, message)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAVAILABLE without reading the request."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        yield  # an async generator, as streaming handlers are

    kinds = ((handler.unary_unary, grpc.unary_unary_rpc_method_handler, unary),
             (handler.stream_unary, grpc.stream_unary_rpc_method_handler, unary),
             (handler.unary_stream, grpc.unary_stream_rpc_method_handler, stream),
             (handler.stream_stream, grpc.stream_stream_rpc_method_handler, stream))
    make, behaviour = next((make, behaviour) for inner, make, behaviour in kinds if inner is not None)
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
