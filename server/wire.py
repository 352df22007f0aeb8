"""Services nui serves under another package than its own copy of their messages: KServe's
`inference.GRPCInferenceService` (proto/kserve.proto, package nui.kserve) and Riva's
`nvidia.riva.asr.RivaSpeechRecognition` (proto/riva_asr.proto, package nui.riva.asr).

    add_servicer(kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], servicer, server)
    wire_file(kserve_pb2.DESCRIPTOR)   # the file as reflection describes it: package inference

Why two names: a process that imports tritonclient or riva.client as well as nui's stubs (tests, an app
using both) would hold two definitions of `inference.ModelInferRequest`, which protobuf's default
descriptor pool refuses; so nui's messages live in nui.* packages. On the wire only the service path
counts (`/inference.GRPCInferenceService/ModelInfer`), never a message name. Both the handlers and the
reflection descriptors come from the proto's `service` block, moved to the wire package: what a
reflection client (grpcurl, Postman, ProtoReflectionDescriptorDatabase) sees is exactly what is served.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

# nui's package -> the protocol's package
WIRE_PACKAGES = {"nui.kserve": "inference", "nui.riva.asr": "nvidia.riva.asr"}


def wire_name(service: ServiceDescriptor) -> str:
    """"nui.kserve.GRPCInferenceService" -> "inference.GRPCInferenceService"; other services as they are."""
    package = service.file.package
    return f"{WIRE_PACKAGES.get(package, package)}.{service.name}" if package else service.name


def add_servicer(service: ServiceDescriptor, servicer: Any, server: grpc.aio.Server) -> str:
    """Serve every method of `service` (servicer.<Method>) under its wire name, which is returned."""
    handlers = {}
    for method in service.methods:
        request, response = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming,
                                                                      method.server_streaming)]
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=request.FromString,
                                     response_serializer=response.SerializeToString)
    name = wire_name(service)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    return name


def wire_file(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    """`file` with its package (and every reference to its own types) moved to the wire package; the file
    name stays. Files of other packages come back unchanged."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
    package = WIRE_PACKAGES.get(proto.package)
    if package is None:
        return proto
    old, new = f".{proto.package}.", f".{package}."

    def moved(name: str) -> str:
        return new + name[len(old):] if name.startswith(old) else name

    def fix_fields(fields: Any) -> None:
        for field in fields:
            if field.type_name:  # proto2 presence: an unset name must stay unset
                field.type_name = moved(field.type_name)
            if field.extendee:
                field.extendee = moved(field.extendee)

    def fix_messages(messages: Any) -> None:
        for message in messages:
            fix_fields(message.field)
            fix_fields(message.extension)
            fix_messages(message.nested_type)

    fix_messages(proto.message_type)
    fix_fields(proto.extension)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = moved(method.input_type), moved(method.output_type)
    proto.package = package
    return proto
