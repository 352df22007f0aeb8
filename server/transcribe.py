"""`nui transcribe`: print the transcript of audio files, in-process or through a server.

    nui transcribe clip.wav more.flac                        # in-process: ONNX Runtime, bundled model
    nui transcribe clip.wav --repo model_repository --words  # word start/end times too
    nui transcribe clip.wav --server 127.0.0.1:50051 --no-lm # over gRPC (`Recognize`)
    nui transcribe clip.wav --server 127.0.0.1:50051 --stream  # `StreamingRecognize`, real-time chunks,
                                                              # interim results (server/transcribe_stream.py)

In-process runs use the server's own pre/post-processing (`SpeechCTCModel.prepare` and `run_batch`),
without gRPC. One file: the transcript alone; several: `path: transcript` per file. With --words each
word follows on its own line as `  start_s end_s word`. Exit status 0 when every file was transcribed,
1 otherwise (each failure is one `error:` line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from engines.engine import default_intra_op_threads
from models.ctc_text import WordTiming
from proto import speech_pb2, speech_pb2_grpc
from server.audio import AudioEncoding, AudioLimits
from server.errors import RequestError
from server.repository import DEFAULT_MODEL, default_repo, load_speech_models, resolve
from server.speech_ctc import DecodeOptions, Hypothesis, Recognition
from server.transcribe_stream import stream_file

PROG = "nui transcribe"

Transcriber = Callable[[bytes, str], Recognition]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Transcribe audio files (WAV, FLAC, OGG).")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--server", default=None, metavar="HOST:PORT", help="use a running `nui serve`")
    p.add_argument("--repo", type=Path, default=None,
                   help="model repository for in-process runs (default: the bundled model_repository)")
    p.add_argument("--model", default="", help=f"default: {DEFAULT_MODEL}, or speech_ctc_streaming with --stream")
    p.add_argument("--version", type=int, default=0, help="model version (0: latest)")
    p.add_argument("--words", action="store_true", help="print word start/end times")
    p.add_argument("--lm", action=argparse.BooleanOptionalAction, default=None,
                   help="beam search with the model's language model (default: when the model has one)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-file deadline with --server")
    p.add_argument("--stream", action="store_true", help="with --server: stream each file as if recorded live")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per message with --stream")
    p.add_argument("--pace", action=argparse.BooleanOptionalAction, default=True,
                   help="with --stream: send one chunk per chunk duration (real time)")
    return p


def in_process_transcriber(repo: Path, model_name: str, version: int, options: DecodeOptions) -> Transcriber:
    """Load the model once; the returned function transcribes one file's bytes (raises RequestError)."""
    # one file at a time: the engine's own threads are the only parallelism (a server runs a batch per core)
    models = load_speech_models(repo, intra_op_threads=default_intra_op_threads())
    model = resolve(models, model_name, version)
    limits = AudioLimits()

    def transcribe(data: bytes, request_id: str) -> Recognition:
        utterance = model.prepare(data, AudioEncoding.AUTO, 0, options, limits, request_id)
        [result] = model.run_batch([utterance])
        if isinstance(result, Exception):
            raise result
        return result

    return transcribe


def grpc_transcriber(channel: grpc.Channel, model_name: str, version: int, options: DecodeOptions,
                     timeout_s: float) -> Transcriber:
    """Call `Recognize` for one file's bytes (raises grpc.RpcError)."""
    stub = speech_pb2_grpc.SpeechStub(channel)
    decoder = {None: speech_pb2.DECODER_UNSPECIFIED, False: speech_pb2.DECODER_GREEDY,
               True: speech_pb2.DECODER_BEAM_LM}[options.use_lm]
    config = speech_pb2.RecognitionConfig(enable_word_time_offsets=options.words, decoder=decoder,
                                          model=model_name, model_version=version)

    def transcribe(data: bytes, request_id: str) -> Recognition:
        request = speech_pb2.RecognizeRequest(config=config, audio=data, request_id=request_id)
        response = stub.Recognize(request, timeout=timeout_s)
        return from_response(response)

    return transcribe


def from_response(response: speech_pb2.RecognizeResponse) -> Recognition:
    alternatives = tuple(
        Hypothesis(alt.transcript, alt.confidence,
                   tuple(WordTiming(w.word, w.start_s, w.end_s) for w in alt.words))
        for result in response.results for alt in result.alternatives)
    return Recognition(alternatives, response.audio_duration_s)


def format_result(path: Path, recognition: Recognition, several: bool, words: bool) -> Iterator[str]:
    best = recognition.alternatives[0]
    yield f"{path}: {best.transcript}" if several else best.transcript
    if words:
        for w in best.words:
            yield f"  {w.start_s:6.2f} {w.end_s:6.2f} {w.word}"


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _rpc_message(e: grpc.RpcError, server: str) -> str:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the speech server at {server} is unavailable: {details}"
    name = code.name if code is not None else "UNKNOWN"
    return f"server {server} answered {name}: {details}"


def run_files(files: list[Path], transcribe: Transcriber, words: bool, server: str | None) -> int:
    failures = 0
    for i, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError as e:
            _error(f"{path}: cannot read it ({e.strerror or e})")
            failures += 1
            continue
        try:
            recognition = transcribe(data, f"{path.name}-{i}"[:64])
        except RequestError as e:
            _error(f"{path}: {e.message}")
            failures += 1
            continue
        except grpc.RpcError as e:
            _error(f"{path}: {_rpc_message(e, server or '?')}")
            failures += 1
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNAVAILABLE:
                return 1  # the other files would fail the same way
            continue
        for line in format_result(path, recognition, several=len(files) > 1, words=words):
            print(line, flush=True)
    return 1 if failures else 0


def _stream_files(args: argparse.Namespace) -> int:
    if args.server is None:
        _error("--stream needs --server HOST:PORT (a server with a streaming model)")
        return 1
    failures = 0
    with grpc.insecure_channel(args.server) as channel:
        for path in args.files:
            try:
                for line in stream_file(channel, path, args.model, args.version, words=args.words, use_lm=args.lm,
                                        chunk_ms=args.chunk_ms, pace=args.pace,
                                        timeout_s=args.timeout_s):
                    print(f"{path}: {line}" if len(args.files) > 1 else line, flush=True)
            except (OSError, RuntimeError) as e:  # unreadable file (soundfile raises RuntimeError subclasses)
                _error(f"{path}: cannot read it ({e})")
                failures += 1
            except grpc.RpcError as e:
                _error(f"{path}: {_rpc_message(e, args.server)}")
                failures += 1
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = DecodeOptions(words=args.words, use_lm=args.lm)
    if args.stream:
        return _stream_files(args)
    if args.server is not None:
        with grpc.insecure_channel(args.server) as channel:
            transcribe = grpc_transcriber(channel, args.model, args.version, options, args.timeout_s)
            return run_files(args.files, transcribe, args.words, args.server)
    repo = args.repo if args.repo is not None else default_repo()
    if not repo.is_dir():
        _error(f"model repository {repo} does not exist; pass --repo DIR or --server HOST:PORT")
        return 1
    try:
        transcribe = in_process_transcriber(repo, args.model, args.version, options)
    except RequestError as e:
        _error(e.message)
        return 1
    except ValueError as e:
        _error(str(e))
        return 1
    return run_files(args.files, transcribe, args.words, None)


if __name__ == "__main__":
    sys.exit(main())
