"""`nui caption`: caption images, in-process or through a server.

    nui caption photo.jpg more.png                                # in-process: ONNX Runtime, bundled model
    nui caption photo.jpg --beam 5 --n-best 3 --repo model_repository
    nui caption photo.jpg --server 127.0.0.1:50051 --beam 1       # over gRPC (`nui.v1.Captioner/Caption`)

In-process runs use the server's own code (`CaptionerModel.prepare`, `ServedCaptioner.caption`) without
gRPC, all files at once through the same batchers. One file: its caption (with --n-best N > 1, N lines
`score<TAB>caption`, best first); several: `path: caption` per file (and the n-best indented below).
Exit status 0 when every file was captioned, 1 otherwise (each failure is one `error:` line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from proto import caption_pb2, caption_pb2_grpc
from server.caption_service import request_options, to_response
from server.captioner import DEFAULT_MODEL, TASK, CaptionBatching, ImageLimits, ServedCaptioner
from server.errors import RequestError
from server.repository import default_repo, load_task_models, resolve

PROG = "nui caption"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Caption images (JPEG, PNG, WebP).")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--server", default=None, metavar="HOST:PORT", help="use a running `nui serve`")
    p.add_argument("--repo", type=Path, default=None,
                   help="model repository for in-process runs (default: the bundled model_repository)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--version", type=int, default=0, help="model version (0: latest)")
    p.add_argument("--beam", type=int, default=3, help="beam size (1: greedy)")
    p.add_argument("--n-best", type=int, default=1, help="captions per image, best first")
    p.add_argument("--max-length", type=int, default=0, help="most tokens per caption (0: the model's limit)")
    p.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha, 0..2")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-image deadline with --server")
    return p


def config_of(args: argparse.Namespace) -> caption_pb2.CaptionConfig:
    return caption_pb2.CaptionConfig(model=args.model, model_version=args.version, beam_size=args.beam,
                                     n_best=args.n_best, max_length=args.max_length,
                                     length_penalty=args.length_penalty)


async def caption_in_process(images: list[bytes], config: caption_pb2.CaptionConfig, repo: Path
                             ) -> list[caption_pb2.CaptionResponse | Exception]:
    """Every image through one in-process ServedCaptioner (batched together); a result or error each."""
    model = resolve(load_task_models(repo, TASK), config.model or DEFAULT_MODEL, config.model_version)
    served = ServedCaptioner.create(model, CaptionBatching())

    async def one(data: bytes) -> caption_pb2.CaptionResponse | Exception:
        request_id = uuid.uuid4().hex[:16]
        try:
            job = await asyncio.to_thread(model.prepare, data, request_options(config), ImageLimits(), request_id)
            result = await served.caption(job)
        except Exception as e:  # this image's failure; the others go on
            return e
        return to_response(result, model.name, model.version, request_id, 0.0)

    try:
        return list(await asyncio.gather(*(one(d) for d in images)))
    finally:
        await served.close()


def caption_over_grpc(images: list[bytes], config: caption_pb2.CaptionConfig, server: str, timeout_s: float
                      ) -> list[caption_pb2.CaptionResponse | Exception]:
    results: list[caption_pb2.CaptionResponse | Exception] = []
    with grpc.insecure_channel(server) as channel:
        stub = caption_pb2_grpc.CaptionerStub(channel)
        for data in images:
            try:
                results.append(stub.Caption(caption_pb2.CaptionRequest(config=config, image=data,
                                                                       request_id=uuid.uuid4().hex[:16]),
                                            timeout=timeout_s))
            except grpc.RpcError as e:
                results.append(e)
    return results


def format_result(path: Path, response: caption_pb2.CaptionResponse, several: bool) -> Iterator[str]:
    captions = list(response.captions)
    if several:
        yield f"{path}: {captions[0].text}"
    if len(captions) > 1:
        for c in captions:
            yield f"{'  ' if several else ''}{c.score:.3f}\t{c.text}"
    elif not several:
        yield captions[0].text


def _message(error: Exception, server: str | None) -> str:
    if isinstance(error, RequestError | ValueError | OSError):
        return getattr(error, "message", None) or str(error)
    if isinstance(error, grpc.Call):
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return f"the caption server at {server} is unavailable: {error.details()}"
        return f"server {server} answered {error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    images: list[bytes | Exception] = []
    for f in args.files:
        try:
            images.append(f.read_bytes())
        except OSError as e:
            images.append(e)
    readable = [d for d in images if isinstance(d, bytes)]
    config = config_of(args)
    try:
        if args.server:
            answers = caption_over_grpc(readable, config, args.server, args.timeout_s)
        else:
            answers = asyncio.run(caption_in_process(readable, config, args.repo or default_repo()))
    except (RequestError, ValueError, OSError) as e:  # no such model / repository
        print(f"{PROG}: error: {_message(e, args.server)}", file=sys.stderr)
        return 1
    it = iter(answers)
    results = [next(it) if isinstance(d, bytes) else d for d in images]
    failures = 0
    for path, result in zip(args.files, results, strict=True):
        if isinstance(result, Exception):
            failures += 1
            print(f"{PROG}: error: {path}: {_message(result, args.server)}", file=sys.stderr)
            continue
        for line in format_result(path, result, len(args.files) > 1):
            print(line)
    return 1 if failures else 0
