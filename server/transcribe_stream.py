"""`nui transcribe --stream`: send a file to `StreamingRecognize` as if it were being recorded.

    nui transcribe clip.wav --server 127.0.0.1:50051 --stream [--chunk-ms 100] [--no-pace] [--words]

The file is decoded and sent as 16-bit PCM in chunks of --chunk-ms, one chunk per chunk duration (real
time) unless --no-pace. Interim results print as `~ text` lines (when the text changed), final results
as plain lines, each followed by its words with --words (`  start_s end_s word`, from the stream start).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf

from proto import speech_pb2, speech_pb2_grpc


def pcm16_chunks(path: Path, chunk_ms: float) -> tuple[int, list[bytes]]:
    """(sample rate, chunks of mono int16 bytes) of an audio file."""
    audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    size = max(2, 2 * round(rate_hz * chunk_ms / 1000))
    return rate_hz, [pcm[i: i + size] for i in range(0, len(pcm), size)]


def stream_file(channel: grpc.Channel, path: Path, model: str, version: int, *, words: bool, use_lm: bool | None,
                chunk_ms: float, pace: bool, timeout_s: float) -> Iterator[str]:
    """Lines to print, as the server's responses arrive (raises grpc.RpcError). The deadline is the
    audio's duration plus `timeout_s`."""
    rate_hz, chunks = pcm16_chunks(path, chunk_ms)
    duration_s = sum(len(c) for c in chunks) / 2 / rate_hz
    decoder = {None: speech_pb2.DECODER_UNSPECIFIED, False: speech_pb2.DECODER_GREEDY,
               True: speech_pb2.DECODER_BEAM_LM}[use_lm]
    config = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=rate_hz,
                                          interim_results=True, enable_word_time_offsets=words, decoder=decoder,
                                          model=model, model_version=version)

    def requests() -> Iterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(config=config, request_id=path.name[:64])
        for chunk in chunks:
            if pace:
                time.sleep(len(chunk) / 2 / rate_hz)
            yield speech_pb2.StreamingRecognizeRequest(audio=chunk)

    responses = speech_pb2_grpc.SpeechStub(channel).StreamingRecognize(requests(), timeout=duration_s + timeout_s)
    for response in responses:
        for result in response.results:
            best = result.alternatives[0]
            if not result.is_final:
                yield f"~ {best.transcript}"
                continue
            yield best.transcript
            for w in best.words if words else ():
                yield f"  {w.start_s:6.2f} {w.end_s:6.2f} {w.word}"
