"""`nui serve`: run the gRPC server (speech recognition, diagnosis, image captioning) over a model repository.

    nui serve --repo model_repository --host 127.0.0.1 --port 50051 --max-batch-size 16 --max-queue-delay-ms 5
    nui serve --metrics-port 8002 --auth-token-file token.txt --tls-cert cert.pem --tls-key key.pem \
              --poll-repository-s 5 --log-format json           # production settings (README: Serving)
    nui serve --provider cuda                                   # ONNX Runtime CUDA EP (onnxruntime-gpu build)
    python -m server.main --repo model_repository --port 0     # any free port; the address is printed

Prints `listening on HOST:PORT` (and `metrics on HOST:PORT`) once every model is loaded and warmed up and
health reports SERVING; stops gracefully
on SIGINT/SIGTERM. Exit status 0 after a clean shutdown, 1 when start-up fails (message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from engines.engine import PROVIDERS
from server.app import ServerConfig, SpeechServer, host_port, serve
from server.logs import LOG_FORMATS, configure_logging
from server.repository import default_repo

logger = logging.getLogger(__name__)

MAX_DEFAULT_DECODE_WORKERS = 4


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
    p.add_argument("--max-queue-wait-ms", type=float, default=d.max_queue_wait_ms,
                   help="refuse (RESOURCE_EXHAUSTED) a call to a speech or diagnosis model whose wait in the "
                        "queue, predicted from measured run times, would exceed this; 0: count bound only "
                        "(default %(default)s)")
    p.add_argument("--max-audio-s", type=float, default=d.max_audio_s, help="longest clip accepted")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="ONNX Runtime threads per engine run (default: all cores, at most 4)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default=d.provider,
                   help="ONNX Runtime execution provider of every model (default %(default)s); cuda and "
                        "tensorrt need an onnxruntime-gpu build (start-up fails naming what this build has)")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="processes per speech model version that run beam + LM decoding in parallel; 0: in the "
                        "server's own threads, one at a time (default: one per CPU core, at most 4; 0 on one core)")
    p.add_argument("--shutdown-grace-s", type=float, default=d.shutdown_grace_s)
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics on this port of --host; 0: off (default)")
    p.add_argument("--auth-token-file", type=Path, default=None,
                   help="file holding a token; calls must then send 'authorization: Bearer <token>' "
                        "(health stays open)")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument("--keepalive-time-s", type=float, default=d.keepalive_time_s,
                   help="ping idle connections this often (default %(default)s)")
    p.add_argument("--keepalive-timeout-s", type=float, default=d.keepalive_timeout_s,
                   help="close a connection whose ping is unanswered this long (default %(default)s)")
    p.add_argument("--poll-repository-s", type=float, default=d.poll_repository_s,
                   help="look for new/removed model versions this often; 0: only on RepositoryModelLoad "
                        "(default %(default)s)")
    p.add_argument("--retire-after-s", type=float, default=d.retire_after_s,
                   help="a replaced version keeps answering late lookups this long, then drains "
                        "(default %(default)s)")
    p.add_argument("--max-streams", type=int, default=d.max_streams, help="open streaming calls (default %(default)s)")
    p.add_argument("--max-stream-s", type=float, default=d.max_stream_s, help="audio per stream (default %(default)s)")
    p.add_argument("--stream-idle-s", type=float, default=d.stream_idle_s,
                   help="a stream silent this long is ended (default %(default)s)")
    p.add_argument("--stream-lm-lookahead-s", type=float, default=d.stream_lm_lookahead_s,
                   help="streaming finals with the LM are decoded while the audio streams, committing words "
                        "once this much audio follows them; 0: each utterance whole at its end "
                        "(default %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text lines or JSON lines (sizes, ids, codes, timings only; never content)")
    return p


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace removed); ValueError when unreadable or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --auth-token-file {path}: {e}") from e
    if not token:
        raise ValueError(f"--auth-token-file {path} is empty")
    return token


def default_decode_workers(asked: int | None) -> int:
    """--decode-workers as given, else one per CPU core this process may use, at most 4 (each worker holds
    its own copy of the LM, per speech version), and 0 with a single core."""
    if asked is not None:
        if asked < 0:
            raise ValueError(f"--decode-workers must be >= 0, got {asked}")
        return asked
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_DEFAULT_DECODE_WORKERS) if cores > 1 else 0


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        repo=args.repo if args.repo is not None else default_repo(), host=args.host, port=args.port,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size, max_queue_wait_ms=args.max_queue_wait_ms or None,
        max_audio_s=args.max_audio_s,
        max_message_bytes=args.max_message_bytes, intra_op_threads=args.intra_op_threads,
        provider=args.provider, decode_workers=default_decode_workers(args.decode_workers),
        shutdown_grace_s=args.shutdown_grace_s, metrics_port=args.metrics_port or None,
        auth_token=read_token(args.auth_token_file) if args.auth_token_file is not None else None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, keepalive_time_s=args.keepalive_time_s,
        keepalive_timeout_s=args.keepalive_timeout_s, poll_repository_s=args.poll_repository_s,
        retire_after_s=args.retire_after_s, max_streams=args.max_streams, max_stream_s=args.max_stream_s,
        stream_idle_s=args.stream_idle_s, stream_lm_lookahead_s=args.stream_lm_lookahead_s)


def _announce(server: SpeechServer) -> None:
    print(f"listening on {server.address}", flush=True)
    if server.metrics_port is not None:
        print(f"metrics on {host_port(server.host, server.metrics_port)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config, on_ready=_announce))
    except (ValueError, OSError) as e:  # bad flags, missing/mismatched repository, port in use
        print(f"nui serve: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
