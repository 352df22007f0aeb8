"""TorchServe handler for bench/serving.py: nui's speech CTC model behind TorchServe's dynamic batcher.

TorchServe (0.12) gathers up to `batchSize` requests for at most `maxBatchDelay` ms and calls `handle`
with the batch. This handler does exactly what nui's `Recognize` does for a greedy request, with
nui's own code, so the two servers differ only in their serving layer:

- `SpeechCTCModel.prepare` per request: decode the WAV bytes (`server.audio`), resample to the model
  rate, validate (too short/long, bad bytes -> that request's own 400);
- `SpeechCTCModel.run_batch`: pad to the longest, one ONNX Runtime run (`engines.engine.OnnxRuntimeEngine`,
  same session options and `intra_op_threads` as `nui serve --intra-op-threads`), greedy decoding of each
  valid slice with its confidence.

The answer per request is JSON `{"transcript", "confidence", "audio_duration_s", "batch_size"}` (the
size of the batch it ran in, so the bench can report TorchServe's mean batch size). The archive holds the
model version folder as `1/` (manifest + files, sha256-checked at load) and a model-config.yaml with
`handler: {intra_op_threads: N}`; the worker needs the nui repository on PYTHONPATH (bench/serving.py
sets it). Built and started by bench/serving.py; not used by nui itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from engines.engine import OnnxRuntimeEngine
from server.audio import AudioEncoding, AudioLimits
from server.errors import RequestError
from server.speech_ctc import DecodeOptions, SpeechCTCModel

logger = logging.getLogger(__name__)

GREEDY = DecodeOptions(words=False, use_lm=False, max_alternatives=1)  # nui's DECODER_GREEDY request


class SpeechCTCHandler:
    """TorchServe's custom-handler contract: `initialize(context)` once, `handle(batch, context)` per batch."""

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        options = (context.model_yaml_config or {}).get("handler", {})
        threads = int(options["intra_op_threads"])
        self.model = SpeechCTCModel(OnnxRuntimeEngine(model_dir / "1", intra_op_threads=threads))
        self.limits = AudioLimits()

    def handle(self, batch: list[dict[str, Any]], context: Any) -> list[str]:
        """One answer per request, in order; a bad request gets its own 400 and leaves its batch-mates alone."""
        answers: list[str] = [""] * len(batch)
        ready: dict[int, Any] = {}
        for i, request in enumerate(batch):
            audio = request.get("data") or request.get("body")
            try:
                if not isinstance(audio, bytes | bytearray):
                    raise ValueError("send the WAV bytes as input 'data'")
                ready[i] = self.model.prepare(bytes(audio), AudioEncoding.AUTO, 0, GREEDY, self.limits, str(i))
            except (RequestError, ValueError) as e:
                context.set_response_status(code=400, phrase=str(e), idx=i)
                answers[i] = json.dumps({"error": str(e)})
        if ready:
            for i, result in zip(ready, self.model.run_batch(list(ready.values())), strict=True):
                if isinstance(result, Exception):
                    logger.error("decoding failed: %s", type(result).__name__)
                    context.set_response_status(code=500, phrase="decoding failed", idx=i)
                    answers[i] = json.dumps({"error": "decoding failed"})
                    continue
                best = result.alternatives[0]
                answers[i] = json.dumps({"transcript": best.transcript, "confidence": best.confidence,
                                         "audio_duration_s": result.audio_duration_s, "batch_size": len(batch)})
        return answers
