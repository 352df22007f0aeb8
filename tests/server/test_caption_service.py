"""`nui.v1.Captioner` over a real grpc.aio server (port 0) with the tiny captioner exported to ONNX."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from models.caption_text import CaptionTokenizer
from models.captioner import Captioner
from proto import caption_pb2, caption_pb2_grpc
from server.app import ServerConfig, SpeechServer, start_server
from server.captioner import CaptionerModel, ImageLimits, decode_image
from server.errors import RequestError
from server.repository import load_task_models
from tests.captioner_tiny import CAPTIONS, picture, picture_bytes

CaptionerModels = dict[str, dict[int, CaptionerModel]]
StartServer = Callable[..., Awaitable[SpeechServer]]


@pytest.fixture(scope="session")
def caption_repo(tmp_path_factory: pytest.TempPathFactory,
                 tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> Path:
    from engines.export_captioner import export_captioner

    model, tokenizer = tiny_captioner
    repo = tmp_path_factory.mktemp("caption_repository")
    export_captioner(model, tokenizer.to_str(), repo, "captioner", 1)
    return repo


@pytest.fixture
def captioner_models(caption_repo: Path) -> CaptionerModels:
    return load_task_models(caption_repo, "captioner", intra_op_threads=1)


@pytest.fixture
async def start(caption_repo: Path, captioner_models: CaptionerModels) -> AsyncIterator[StartServer]:
    """`await start(from_repo=False, **ServerConfig overrides)`: a server on 127.0.0.1, port 0; stopped at
    teardown."""
    started: list[SpeechServer] = []

    async def _start(from_repo: bool = False, **overrides: object) -> SpeechServer:
        settings: dict[str, object] = {"repo": caption_repo, "port": 0, "max_queue_delay_ms": 20.0,
                                       "intra_op_threads": 1, **overrides}
        config = ServerConfig(**settings)  # type: ignore[arg-type]
        server = await (start_server(config) if from_repo else start_server(config, captioner_models=captioner_models))
        started.append(server)
        return server

    yield _start
    for server in started:
        await server.stop(0)


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (with one row of data): what a decompression bomb or a
    zero-size image looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 7))
            + chunk(b"IEND", b""))


def request(image: bytes, **config: object) -> caption_pb2.CaptionRequest:
    return caption_pb2.CaptionRequest(image=image, config=caption_pb2.CaptionConfig(**config))  # type: ignore[arg-type]


async def test_caption_returns_the_right_caption_in_every_format(start: StartServer) -> None:
    server = await start(from_repo=True)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = caption_pb2_grpc.CaptionerStub(channel)
        for kind, fmt, size in (("red", "PNG", 32), ("blue", "JPEG", 300), ("red", "WEBP", 57)):
            reply = await stub.Caption(request(picture_bytes(kind, fmt, size, seed=7), beam_size=3, n_best=3),
                                       timeout=10)
            assert reply.captions[0].text == CAPTIONS[kind]
            assert len(reply.captions) == 3 and (reply.image_width, reply.image_height) == (size, size)
            scores = [c.score for c in reply.captions]
            assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
            assert reply.captions[0].finished and reply.captions[0].score == reply.captions[0].log_prob
            assert (reply.model, reply.model_version) == ("captioner", 1) and reply.request_id
            # the beam goes on until it holds 3 finished captions: at least the best one's words + EOS steps
            assert reply.timing.decoder_steps >= len(CAPTIONS[kind].split()) + 1 and reply.timing.total_ms > 0
        greedy = await stub.Caption(request(picture_bytes("blue"), beam_size=1, max_length=3), timeout=10)
        assert greedy.captions[0].text == "a blue circle" and not greedy.captions[0].finished
        assert greedy.timing.decoder_steps == 3 and len(greedy.captions) == 1
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="nui.v1.Captioner"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_concurrent_calls_share_encoder_and_decoder_batches(start: StartServer) -> None:
    server = await start(max_queue_delay_ms=50.0)
    served = server.captioner["captioner"][1]
    n = 8
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = caption_pb2_grpc.CaptionerStub(channel)
        encoder_runs, step_runs = served.encoder.stats.runs, served.steps.stats.runs
        kinds = ["red" if i % 2 else "blue" for i in range(n)]
        replies = await asyncio.gather(*(stub.Caption(request(picture_bytes(k, seed=i), beam_size=2), timeout=20)
                                         for i, k in enumerate(kinds)))
    assert [r.captions[0].text for r in replies] == [CAPTIONS[k] for k in kinds]
    steps = sum(r.timing.decoder_steps for r in replies)
    assert served.encoder.stats.runs - encoder_runs < n
    assert served.steps.stats.runs - step_runs < steps


@pytest.mark.parametrize(("image", "message"), [
    (b"", "image is empty"),
    (b"this is not an image at all", "image is not a JPEG, PNG, WEBP image"),
    (_png_with_size(0, 5), "image"),
    (_png_with_size(100_000, 100_000), "pixels"),
    (_png_with_size(8000, 8000), "image is 8000x8000 = 64000000 pixels; at most 50000000"),
    (picture_bytes("red", "PNG", 64)[:80], "image could not be decoded"),  # truncated
    (b"GIF89a" + b"\x00" * 32, "image is not a JPEG, PNG, WEBP image"),
])
async def test_bad_images_are_invalid_argument_and_spare_their_batch_mates(start: StartServer, image: bytes,
                                                                         message: str) -> None:
    server = await start(max_queue_delay_ms=50.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = caption_pb2_grpc.CaptionerStub(channel)
        good = [stub.Caption(request(picture_bytes(k, seed=3)), timeout=10) for k in CAPTIONS]
        results = await asyncio.gather(stub.Caption(request(image), timeout=10), *good, return_exceptions=True)
    bad = results[0]
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (bad.details() or "")
    assert [r.captions[0].text for r in results[1:]] == list(CAPTIONS.values())  # type: ignore[union-attr]


@pytest.mark.parametrize(("config", "code", "field"), [
    ({"beam_size": 17}, grpc.StatusCode.OUT_OF_RANGE, "config.beam_size is 17; allowed: 1..16"),
    ({"beam_size": -1}, grpc.StatusCode.OUT_OF_RANGE, "config.beam_size"),
    ({"beam_size": 2, "n_best": 3}, grpc.StatusCode.OUT_OF_RANGE, "config.n_best is 3; allowed: 1..beam_size (2)"),
    ({"max_length": 12}, grpc.StatusCode.OUT_OF_RANGE, "config.max_length is 12; allowed: 1..11"),
    ({"length_penalty": 2.5}, grpc.StatusCode.OUT_OF_RANGE, "config.length_penalty"),
    ({"length_penalty": float("nan")}, grpc.StatusCode.OUT_OF_RANGE, "config.length_penalty"),
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "config.model 'nope' is not loaded"),
    ({"model_version": 4}, grpc.StatusCode.NOT_FOUND, "config.model_version 4"),
])
async def test_bad_options_get_the_right_code_naming_the_field(start: StartServer, config: dict[str, object],
                                                               code: grpc.StatusCode, field: str) -> None:
    server = await start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await caption_pb2_grpc.CaptionerStub(channel).Caption(request(picture_bytes("red"), **config), timeout=10)
    assert info.value.code() == code and field in (info.value.details() or "")


def test_decode_image_limits_and_modes() -> None:
    """Byte limit, EXIF orientation, and image modes that must all become RGB."""
    with pytest.raises(RequestError, match="image is 1000 bytes; at most 999"):
        decode_image(b"\x00" * 1000, ImageLimits(max_bytes=999))
    wide = Image.fromarray(picture("red", 16))
    wide = wide.resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=exif)
    rotated, width, height = decode_image(buf.getvalue(), ImageLimits())
    assert rotated.size == (20, 40) and (width, height) == (40, 20)
    for mode in ("L", "LA", "P", "RGBA", "I;16", "1"):
        buf = io.BytesIO()
        Image.new(mode, (9, 7)).save(buf, format="PNG")
        assert decode_image(buf.getvalue(), ImageLimits())[0].convert("RGB").size == (9, 7)
    webp = np.asarray(decode_image(picture_bytes("blue", "WEBP"), ImageLimits())[0].convert("RGB"))
    assert webp.shape == (32, 32, 3)
    # a large JPEG decodes at a reduced DCT scale that keeps both sides >= min_side_px, size as received
    big = picture_bytes("red", "JPEG", size_px=400)
    small, width, height = decode_image(big, ImageLimits(), min_side_px=64)
    assert small.size == (100, 100) and (width, height) == (400, 400)
    gray = io.BytesIO()
    Image.new("L", (300, 200), 128).save(gray, format="JPEG")
    assert decode_image(gray.getvalue(), ImageLimits(), min_side_px=64)[0].size == (150, 100)


async def test_nui_caption_in_process_and_over_grpc(start: StartServer, caption_repo: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from server.caption import main

    red, blue, bad = tmp_path / "red.png", tmp_path / "blue.jpg", tmp_path / "bad.png"
    red.write_bytes(picture_bytes("red", "PNG", 40))
    blue.write_bytes(picture_bytes("blue", "JPEG", 64))
    bad.write_bytes(b"not a picture")
    assert await asyncio.to_thread(main, [str(red), str(bad), str(blue), "--repo", str(caption_repo)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{red}: {CAPTIONS['red']}", f"{blue}: {CAPTIONS['blue']}"]
    assert f"error: {bad}: image is not a JPEG, PNG, WEBP image" in err

    server = await start()
    argv = [str(blue), "--server", server.address, "--beam", "2", "--n-best", "2"]
    assert await asyncio.to_thread(main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith(f"\t{CAPTIONS['blue']}")
    assert float(lines[0].split("\t")[0]) >= float(lines[1].split("\t")[0])
    assert await asyncio.to_thread(main, [str(blue), "--server", server.address, "--beam", "99"]) == 1
    assert "OUT_OF_RANGE: config.beam_size is 99" in capsys.readouterr().err


async def test_captions_end_only_after_the_manifests_end_words(tmp_path: Path, caption_repo: Path,
                                                               tiny_captioner: tuple[Captioner, CaptionTokenizer]
                                                               ) -> None:
    """With `caption_end_ids` naming every word but "grass" and "sky", neither of the tiny model's two
    captions may end where it was trained to: the search goes on past them. A malformed list refuses to load."""
    from engines.export_captioner import export_captioner

    model, tokenizer = tiny_captioner
    words = {w for caption in CAPTIONS.values() for w in caption.split()}
    ends = sorted(tokenizer.encode(w)[1] for w in words - {"grass", "sky"})
    repo = tmp_path / "repo"
    export_captioner(model, tokenizer.to_str(), repo, "captioner", 1, extras={"caption_end_ids": ends})
    server = await start_server(ServerConfig(repo=repo, port=0, intra_op_threads=1))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = caption_pb2_grpc.CaptionerStub(channel)
            for kind in CAPTIONS:
                reply = await stub.Caption(request(picture_bytes(kind), beam_size=3, n_best=3), timeout=20)
                for c in reply.captions:
                    assert c.text.split()[-1] not in ("grass", "sky") or not c.finished, c.text
                    assert c.text.split()[-1] in words - {"grass", "sky"} or not c.finished, c.text
    finally:
        await server.stop(0)
    plain = load_task_models(caption_repo, "captioner", intra_op_threads=1)["captioner"][1]
    assert plain.end_after_ids is None  # no list: a caption may end after any word
    bad = tmp_path / "bad"
    export_captioner(model, tokenizer.to_str(), bad, "captioner", 1, extras={"caption_end_ids": [1, 2]})
    with pytest.raises(ValueError, match="caption_end_ids"):
        load_task_models(bad, "captioner", intra_op_threads=1)
