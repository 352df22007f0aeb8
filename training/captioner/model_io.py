"""Load a trained captioner and its tokenizer from a run folder, a checkpoint folder or a model.safetensors.

Training writes `tokenizer.json` into the run folder's root and into every checkpoint folder, next to
`model.safetensors` (whose metadata names the model "captioner" and carries its CaptionerConfig).
"""

from __future__ import annotations

from pathlib import Path

from models.caption_text import CaptionTokenizer
from models.captioner import Captioner, CaptionerConfig, build
from training.common.checkpoint import read_model_weights

MODEL_NAME = "captioner"
TOKENIZER_FILE = "tokenizer.json"


def find_tokenizer(weights: Path) -> Path:
    """tokenizer.json next to the weights, else in the run folder that holds the checkpoint."""
    for folder in (weights.parent, *weights.parents[1:3]):
        if (folder / TOKENIZER_FILE).is_file():
            return folder / TOKENIZER_FILE
    raise FileNotFoundError(f"no {TOKENIZER_FILE} next to {weights} or in its run folder")


def load_model(path: Path) -> tuple[Captioner, CaptionTokenizer, Path]:
    """(model in eval mode with FP32 weights, its tokenizer, the weights file they came from)."""
    state, cfg, weights = read_model_weights(path, MODEL_NAME)
    model = build(CaptionerConfig.from_dict(cfg))
    model.load_state_dict(state)
    tokenizer = CaptionTokenizer.from_file(find_tokenizer(weights))
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"{weights}: model vocabulary {model.cfg.vocab_size} != tokenizer's {tokenizer.vocab_size}")
    return model.eval(), tokenizer, weights
