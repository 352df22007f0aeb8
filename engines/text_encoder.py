"""Runtime sentence encoder: the exported all-MiniLM-L6-v2 graph behind the `tokenizers` library (no torch,
no transformers).

    encoder = load_text_encoder(Path("model_repository"), "symptom_text")
    vectors = encoder(["my head hurts", "no fever"])  # (2, 384) float32, L2-normalised

The engine (engines/export_symptom_text.py) takes `input_ids` and `attention_mask` int64 [batch, sequence]
and returns `embeddings` float32 [batch, 384] (mean pooling over real tokens and L2 normalisation happen
inside the graph). Texts are sorted by length and cut into batches of at most `batch_size`, so short
phrases are not padded to the longest text of a request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engines.engine import Engine, load_engine
from engines.manifest import version_dir

TOKENIZER_FILE = "tokenizer.json"


class TextEncoder:
    """texts -> (N, E) L2-normalised embeddings through an engine of task "symptom_text"."""

    def __init__(self, engine: Engine, tokenizer_path: Path, max_tokens: int, batch_size: int = 64) -> None:
        if max_tokens < 2 or batch_size < 1:
            raise ValueError(f"max_tokens must be >= 2 and batch_size >= 1, got {max_tokens}, {batch_size}")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:  # tokenizers raises its own exception type
            raise ValueError(f"{tokenizer_path}: cannot load the tokenizer: {e}") from e
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        self.engine = engine
        self.batch_size = batch_size
        self.dim = int(engine.manifest.outputs[0].shape[1])

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            out[rows] = self.engine.run({"input_ids": ids, "attention_mask": mask})["embeddings"]
        return out


def text_encoder_of(engine: Engine, folder: Path) -> TextEncoder:
    """The encoder of a loaded engine whose version folder holds tokenizer.json."""
    return TextEncoder(engine, folder / TOKENIZER_FILE, int(engine.manifest.config.get("max_tokens", 256)))


def load_text_encoder(repo: Path, model: str = "symptom_text", version: int | None = None,
                      intra_op_threads: int | None = None) -> TextEncoder:
    engine = load_engine(repo, model, version, intra_op_threads)
    return text_encoder_of(engine, version_dir(Path(repo), model, engine.version))
