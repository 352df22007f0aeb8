"""`nui serve`: run the gRPC server (speech recognition, diagnosis) over a model repository.

    nui serve --repo model_repository --host 127.0.0.1 --port 50051 --max-batch-size 16 --max-queue-delay-ms 5
    python -m server.main --repo model_repository --port 0     # any free port; the address is printed

Prints `listening on HOST:PORT` once every model is loaded and health reports SERVING; stops gracefully
on SIGINT/SIGTERM. Exit status 0 after a clean shutdown, 1 when start-up fails (message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from server.app import ServerConfig, SpeechServer, serve
from server.repository import default_repo

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig(repo=Path())
    p = argparse.ArgumentParser(prog="nui serve", description="Serve every model of a repository over gRPC.")
    p.add_argument("--repo", type=Path, default=None,
                   help="model repository folder (default: the bundled model_repository)")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-queue-delay-ms", type=float, default=d.max_queue_delay_ms)
    p.add_argument("--max-queue-size", type=int, default=d.max_queue_size)
    p.add_argument("--max-audio-s", type=float, default=d.max_audio_s, help="longest clip accepted")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="ONNX Runtime threads per engine run (default: all cores, at most 4)")
    p.add_argument("--shutdown-grace-s", type=float, default=d.shutdown_grace_s)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        repo=args.repo if args.repo is not None else default_repo(), host=args.host, port=args.port,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size, max_audio_s=args.max_audio_s,
        max_message_bytes=args.max_message_bytes, intra_op_threads=args.intra_op_threads,
        shutdown_grace_s=args.shutdown_grace_s)


def _announce(server: SpeechServer) -> None:
    print(f"listening on {server.address}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        asyncio.run(serve(config, on_ready=_announce))
    except (ValueError, OSError) as e:  # bad flags, missing/mismatched repository, port in use
        print(f"nui serve: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
