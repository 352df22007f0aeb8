"""Bearer-token auth (interceptor) and TLS on a real server; a self-signed certificate made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import speech_pb2, speech_pb2_grpc
from server.app import ServerConfig
from tests.server.conftest import StartServer

TOKEN = "s3cret-token"


async def recognize(channel: grpc.aio.Channel, audio: bytes, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    try:
        await speech_pb2_grpc.SpeechStub(channel).Recognize(speech_pb2.RecognizeRequest(audio=audio), timeout=20,
                                                            metadata=metadata)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_token_is_required_except_for_health(start: StartServer, clips: list[bytes]) -> None:
    server = await start(auth_token=TOKEN)
    async with grpc.aio.insecure_channel(server.address) as channel:
        assert await recognize(channel, clips[0], None) == grpc.StatusCode.UNAUTHENTICATED
        assert await recognize(channel, clips[0], "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert await recognize(channel, clips[0], TOKEN) == grpc.StatusCode.OK
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert server.served["speech_ctc"][1].batcher.stats.items_done == 1  # refused calls did no work


async def test_tritonclient_passes_the_token_as_a_header(start: StartServer) -> None:
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    server = await start(auth_token=TOKEN)
    async with InferenceServerClient(server.address) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.get_model_metadata("speech_ctc")
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        meta = await client.get_model_metadata("speech_ctc", headers={"authorization": f"Bearer {TOKEN}"},
                                               as_json=True)
        assert meta["name"] == "speech_ctc"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (key, cert)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for the TLS tests (scripts/setup.sh installs it)")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


async def test_tls_serves_trusting_clients_only(start: StartServer, clips: list[bytes],
                                                certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    server = await start(tls_cert=cert, tls_key=key, auth_token=TOKEN)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with grpc.aio.secure_channel(server.address, credentials) as channel:
        assert await recognize(channel, clips[0], TOKEN) == grpc.StatusCode.OK
        assert await recognize(channel, clips[0], None) == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(server.address) as plaintext:
        assert await recognize(plaintext, clips[0], TOKEN) == grpc.StatusCode.UNAVAILABLE
    untrusted = grpc.ssl_channel_credentials()  # system roots: the self-signed cert is not among them
    async with grpc.aio.secure_channel(server.address, untrusted) as channel:
        assert await recognize(channel, clips[0], TOKEN) == grpc.StatusCode.UNAVAILABLE


async def test_tritonclient_over_tls(start: StartServer, certificate: tuple[Path, Path]) -> None:
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc.aio import InferenceServerClient

    key, cert = certificate
    server = await start(tls_cert=cert, tls_key=key)
    async with InferenceServerClient(server.address, ssl=True, root_certificates=str(cert)) as client:
        assert await client.is_server_ready()


def test_tls_and_token_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        ServerConfig(repo=tmp_path, tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ValueError, match="auth_token"):
        ServerConfig(repo=tmp_path, auth_token="")
