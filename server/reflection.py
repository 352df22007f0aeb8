"""gRPC server reflection (`grpc.reflection.v1alpha.ServerReflection`) that describes every service the
server registers, under the names it is served by, with every file a client needs to build requests.

    enable_reflection(["nui.v1.Speech", "inference.GRPCInferenceService", ...], server)
    # then, from a client: grpcurl -plaintext 127.0.0.1:50051 describe inference.GRPCInferenceService

grpcio-reflection answers from one descriptor pool, protobuf's default one unless given another. The
default pool holds nui.v1.*, grpc.health.v1 and the reflection service itself, but KServe's and Riva's
services only under nui's own packages (server/wire.py says why), so `inference.GRPCInferenceService` and
`nvidia.riva.asr.RivaSpeechRecognition` would be listed yet not found. The pool built here holds each
service's file, moved to its wire package (server/wire.py), and the files it imports. A service that the
pool cannot describe fails start-up instead of failing the first client that asks.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection

from proto import kserve_pb2, riva_asr_pb2
from server.wire import wire_file, wire_name

SERVICE_NAME = reflection.SERVICE_NAME

# The services served under another name than the default pool knows them by: wire name -> nui's file
_MOVED: dict[str, FileDescriptor] = {
    wire_name(service): file for file in (kserve_pb2.DESCRIPTOR, riva_asr_pb2.DESCRIPTOR)
    for service in file.services_by_name.values()}


def reflection_pool(services: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool describing every service of `services` (full wire names) and everything its files import.
    ValueError naming a service that neither the default pool nor server/wire.py knows."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:  # a file goes in after the files it imports
            add(dependency)
        pool.AddSerializedFile(wire_file(file).SerializeToString())
        added.add(file.name)

    default = descriptor_pool.Default()
    for service in services:
        moved = _MOVED.get(service)
        try:
            add(moved if moved is not None else default.FindFileContainingSymbol(service))
            pool.FindServiceByName(service)
        except KeyError:
            raise ValueError(f"server reflection cannot describe service {service!r}: no .proto file defines it "
                             "under that name (see server/wire.py)") from None
    return pool


def enable_reflection(services: Iterable[str], server: grpc.aio.Server) -> None:
    """Add the reflection service, listing `services` and itself, each described by `reflection_pool`."""
    names = sorted({*services, SERVICE_NAME})
    reflection.enable_server_reflection(names, server, pool=reflection_pool(names))
