"""Server reflection describes every registered service under the name it is served by (server/reflection.py,
server/wire.py): a client holding no .proto file (grpcurl, Postman; grpcio-reflection's
ProtoReflectionDescriptorDatabase here) lists them, resolves each method's messages and builds requests
that the server answers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from server.reflection import reflection_pool
from tests.server.conftest import StartServer
from tests.server.helpers import SAMPLE_RATE_HZ, make_clip, pcm16

SERVICES = {"nui.v1.Speech", "nui.v1.Diagnosis", "nui.v1.Captioner", "inference.GRPCInferenceService",
            "nvidia.riva.asr.RivaSpeechRecognition", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"}


def _call(channel: grpc.Channel, pool: DescriptorPool, method: str, **fields: Any) -> Any:
    """A unary call whose request and response classes come from the reflected descriptors only."""
    descriptor = pool.FindMethodByName(method)
    request, response = GetMessageClass(descriptor.input_type), GetMessageClass(descriptor.output_type)
    service, name = method.rsplit(".", 1)
    stub = channel.unary_unary(f"/{service}/{name}", request_serializer=request.SerializeToString,
                               response_deserializer=response.FromString)
    return stub(request(**fields), timeout=20)


def _reflect(address: str) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        services = set(database.get_services())
        methods = {}
        for name in services:  # file_containing_symbol, then every file it imports
            service = pool.FindServiceByName(name)
            for m in service.methods:
                GetMessageClass(m.input_type)(), GetMessageClass(m.output_type)()
                methods[f"{name}.{m.name}"] = (m.input_type.full_name, m.output_type.full_name,
                                               m.client_streaming, m.server_streaming)
        kserve_file = database.FindFileByName("proto/kserve.proto")  # file_by_filename

        health = _call(channel, pool, "grpc.health.v1.Health.Check", service="inference.GRPCInferenceService")
        samples = np.random.default_rng(0).standard_normal((1, SAMPLE_RATE_HZ)).astype(np.float32)
        infer = _call(channel, pool, "inference.GRPCInferenceService.ModelInfer", model_name="speech_ctc", inputs=[
            {"name": "audio", "datatype": "FP32", "shape": [1, SAMPLE_RATE_HZ]},
            {"name": "audio_lengths", "datatype": "INT64", "shape": [1]}],
            raw_input_contents=[samples.tobytes(), np.array([SAMPLE_RATE_HZ], "<i8").tobytes()])
        linear_pcm = pool.FindEnumTypeByName("nvidia.riva.asr.AudioEncoding").values_by_name["LINEAR_PCM"].number
        riva = _call(channel, pool, "nvidia.riva.asr.RivaSpeechRecognition.Recognize",
                     config={"encoding": linear_pcm, "sample_rate_hertz": SAMPLE_RATE_HZ, "language_code": "en-US",
                             "max_alternatives": 1},
                     audio=pcm16(make_clip(0.8, seed=1)), id={"value": "reflected"})
    return {"services": services, "methods": methods, "kserve_package": kserve_file.package,
            "health": health, "infer": infer, "riva": riva}


async def test_reflection_describes_every_service_and_its_requests_work(start: StartServer) -> None:
    server = await start()
    got = await asyncio.to_thread(_reflect, server.address)

    assert got["services"] == SERVICES
    assert got["kserve_package"] == "inference"  # nui's copy, moved to the protocol's package
    assert got["health"].status == 1  # SERVING, read through the reflected enum's number
    outputs = {o.name: list(o.shape) for o in got["infer"].outputs}
    assert got["infer"].model_name == "speech_ctc" and outputs["log_probs"][0] == 1
    raw = dict(zip([o.name for o in got["infer"].outputs], got["infer"].raw_output_contents, strict=True))
    assert len(raw["log_probs"]) == 4 * int(np.prod(outputs["log_probs"]))
    [result] = got["riva"].results
    assert got["riva"].id.value == "reflected" and result.audio_processed == pytest.approx(0.8, abs=0.01)
    assert len(result.alternatives) == 1

    # the reflected methods carry the names the real clients ship (tritonclient, nvidia-riva-client)
    triton = pytest.importorskip("tritonclient.grpc.service_pb2").DESCRIPTOR.services_by_name["GRPCInferenceService"]
    riva = pytest.importorskip("riva.client.proto.riva_asr_pb2").DESCRIPTOR.services_by_name["RivaSpeechRecognition"]
    for service in (triton, riva):
        ours = {k.rsplit(".", 1)[1]: v for k, v in got["methods"].items() if k.startswith(service.full_name + ".")}
        assert ours, service.full_name
        for name, signature in ours.items():
            theirs = service.methods_by_name[name]
            assert signature == (theirs.input_type.full_name, theirs.output_type.full_name,
                                 theirs.client_streaming, theirs.server_streaming)


def test_a_service_reflection_cannot_describe_fails_start_up() -> None:
    with pytest.raises(ValueError, match=r"nui\.v1\.Nope"):
        reflection_pool(["nui.v1.Speech", "nui.v1.Nope"])
