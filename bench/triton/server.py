"""A real Triton Inference Server (PyTriton 0.7.0: Triton core 2.51, KServe v2 gRPC, its dynamic batcher)
hosting nui's speech CTC model, for bench/serving.py.

    LD_LIBRARY_PATH=$(python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \
        python bench/triton/server.py --version-dir model_repository/speech_ctc/4 --model speech_ctc \
        --grpc-port 8001 --max-batch-size 16 --max-queue-delay-ms 10 --intra-op-threads 2

Triton's dynamic batcher gathers up to --max-batch-size requests for at most --max-queue-delay-ms and hands
the batch (through its Python backend stub and PyTriton's proxy, ~ms of IPC per batch) to `infer`, which
does what nui's `Recognize` does for a greedy request, with nui's own code: `SpeechCTCModel.prepare`
per request (WAV decoding, resampling, validation), then `run_batch` (padding, one ONNX Runtime run with
the given intra-op threads, greedy decoding + confidence). Model `--model`: input `audio` (BYTES, [1]: the
WAV file), outputs `transcript` (BYTES, [1]), `error` (BYTES, [1]: empty unless this request was bad; its
batch-mates are unaffected) and `batch_size` (INT32, [1]: the size of the batch it ran in).

LD_LIBRARY_PATH must name this Python's libdir before start, or the Python backend stub loads another
libpython. Prints `listening on 127.0.0.1:PORT` once the model is ready (everything else goes to stderr);
stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.engine import OnnxRuntimeEngine  # noqa: E402
from server.audio import AudioEncoding, AudioLimits  # noqa: E402
from server.errors import RequestError  # noqa: E402
from server.speech_ctc import DecodeOptions, SpeechCTCModel  # noqa: E402

GREEDY = DecodeOptions(words=False, use_lm=False, max_alternatives=1)  # nui's DECODER_GREEDY request


def make_infer(model: SpeechCTCModel) -> Callable[..., dict[str, np.ndarray]]:
    """The batch function Triton calls (PyTriton `@batch`: inputs stacked along the first axis)."""
    from pytriton.decorators import batch

    limits = AudioLimits()

    @batch
    def infer(audio: np.ndarray) -> dict[str, np.ndarray]:
        """audio: (B, 1) WAV files -> transcript, error (B, 1) bytes and batch_size (B, 1) int32."""
        n = len(audio)
        transcripts, errors = [b""] * n, [b""] * n
        ready = {}
        for i in range(n):
            try:
                ready[i] = model.prepare(bytes(audio[i, 0]), AudioEncoding.AUTO, 0, GREEDY, limits, str(i))
            except RequestError as e:
                errors[i] = e.message.encode()
        if ready:
            for i, result in zip(ready, model.run_batch(list(ready.values())), strict=True):
                if isinstance(result, Exception):
                    errors[i] = b"decoding failed"
                else:
                    transcripts[i] = result.alternatives[0].transcript.encode()
        return {"transcript": np.array(transcripts, dtype=object).reshape(n, 1),
                "error": np.array(errors, dtype=object).reshape(n, 1),
                "batch_size": np.full((n, 1), n, dtype=np.int32)}

    return infer


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/triton/server.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", type=Path, required=True, help="a speech_ctc model version folder")
    p.add_argument("--model", default="speech_ctc")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    p.add_argument("--intra-op-threads", type=int, required=True)
    p.add_argument("--instances", type=int, default=1, help="model instances, each with its own session and batch")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Triton and PyTriton print to stdout; only the announcement may go there.
    announce = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port, allow_http=False,
                          allow_metrics=False, log_verbose=0, exit_timeout_secs=5)
    with Triton(config=config) as triton:
        # a list of callables = that many model instances (PyTriton), each running its own batches
        infer = [make_infer(SpeechCTCModel(OnnxRuntimeEngine(args.version_dir, intra_op_threads=args.intra_op_threads)))
                 for _ in range(args.instances)]
        triton.bind(model_name=args.model, infer_func=infer,
                    inputs=[Tensor(name="audio", dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name="transcript", dtype=bytes, shape=(1,)),
                             Tensor(name="error", dtype=bytes, shape=(1,)),
                             Tensor(name="batch_size", dtype=np.int32, shape=(1,))],
                    config=ModelConfig(max_batch_size=args.max_batch_size, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=int(args.max_queue_delay_ms * 1000))))
        triton.run()
        print(f"listening on 127.0.0.1:{args.grpc_port}", file=announce, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
