"""Load a speech CTC model from a run folder, a checkpoint folder, or a model.safetensors (FP32/FP16)."""

from __future__ import annotations

from pathlib import Path

from models.speech_ctc import SpeechCTC, SpeechCTCConfig, build
from training.common.checkpoint import read_weights, resolve_weights

MODEL_NAME = "speech_ctc"


def load_model(path: Path) -> tuple[SpeechCTC, Path]:
    """(model in eval mode with FP32 weights, the weights file it came from)."""
    weights = resolve_weights(path)
    state, name, cfg = read_weights(weights)
    if name != MODEL_NAME:
        raise ValueError(f"{weights} holds a {name!r} model, not {MODEL_NAME}")
    model = build(SpeechCTCConfig.from_dict(cfg))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), weights
