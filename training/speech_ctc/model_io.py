"""Load a speech CTC model from a run folder, a checkpoint folder, or a model.safetensors (FP32/FP16)."""

from __future__ import annotations

from pathlib import Path

from models.speech_ctc import SpeechCTC, SpeechCTCConfig, build
from training.common.checkpoint import read_model_weights

MODEL_NAME = "speech_ctc"


def load_model(path: Path) -> tuple[SpeechCTC, Path]:
    """(model in eval mode with FP32 weights, the weights file it came from)."""
    state, cfg, weights = read_model_weights(path, MODEL_NAME)
    model = build(SpeechCTCConfig.from_dict(cfg))
    model.load_state_dict(state)
    return model.eval(), weights
