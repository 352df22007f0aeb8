"""Serving side of free-text symptom understanding: a "symptom_text" model version (int8 MiniLM encoder,
tokenizer, phrase table, tuned threshold) and the diagnosis model it serves.

A symptom_text version is not served on its own: it belongs to the diagnosis models of the same knowledge
base. `text_model_for` finds, for a diagnosis version, the highest symptom_text version in the same
repository whose manifest carries the same `kb_fingerprint` (the encoder and table do not depend on the
diagnosis weights, so retraining diagnosis does not copy a 23 MB encoder into every version), checks
that its symptom ids are the diagnosis tables' ids in the same order, and loads it once per process.
A newer symptom_text version published while serving reloads the diagnosis versions it belongs to
(server/model_store.py asks `text_model_version` whether their text model is still the newest).

Nothing here logs text (health data).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.engine import load_engine
from engines.manifest import model_versions, read_manifest, version_dir
from engines.text_encoder import text_encoder_of
from models.symptom_text import Encoder, PhraseTable, TextUnderstanding, understand

logger = logging.getLogger(__name__)

TASK = "symptom_text"
MAX_TEXT_CHARS = 2000


@dataclass
class SymptomTextModel:
    name: str
    version: int
    encoder: Encoder  # texts -> L2-normalised embeddings (engines.text_encoder.TextEncoder in serving)
    table: PhraseTable
    threshold: float  # tuned at export (manifest extras)

    def understand(self, texts: Sequence[str], thresholds: Sequence[float]) -> list[TextUnderstanding]:
        """One result per text; texts sharing a threshold are understood in one batch (two encoder runs)."""
        out: list[TextUnderstanding | None] = [None] * len(texts)
        for t in sorted(set(thresholds)):
            rows = [i for i, ti in enumerate(thresholds) if ti == t]
            for i, r in zip(rows, understand([texts[i] for i in rows], self.encoder, self.table, t), strict=True):
                out[i] = r
        return [r for r in out if r is not None]


def load_symptom_text_model(repo: Path, name: str, version: int, intra_op_threads: int | None = None,
                            provider: str = "cpu") -> SymptomTextModel:
    engine = load_engine(repo, name, version, intra_op_threads, provider=provider)
    folder = version_dir(repo, name, version)
    threshold = engine.manifest.extras.get("threshold")
    if not isinstance(threshold, (int, float)):
        raise ValueError(f"{folder}: manifest extras have no numeric 'threshold'")
    return SymptomTextModel(name=name, version=version, encoder=text_encoder_of(engine, folder),
                            table=PhraseTable.load(folder), threshold=float(threshold))


# Loaded text models, shared by the diagnosis versions of one knowledge base; a newer version of the
# same model evicts the older ones (diagnosis versions still serving them keep their own reference).
_cache: dict[tuple[str, str, int, int | None, str], SymptomTextModel] = {}
_cache_lock = threading.Lock()


def text_model_version(repo: Path, kb_fingerprint: str) -> tuple[str, int] | None:
    """(name, version) of the highest symptom_text version in `repo` made for this knowledge base."""
    if not kb_fingerprint or not repo.is_dir():
        return None
    best: tuple[int, str] | None = None
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for v in model_versions(repo, d.name):
            m = read_manifest(version_dir(repo, d.name, v), verify=False)
            if m.task == TASK and m.extras.get("kb_fingerprint") == kb_fingerprint and (best is None or v > best[0]):
                best = (v, d.name)
    return None if best is None else (best[1], best[0])


def text_model_for(repo: Path, kb_fingerprint: str, symptom_ids: Sequence[str], intra_op_threads: int | None = None,
                   provider: str = "cpu") -> SymptomTextModel | None:
    """The symptom_text model of this knowledge base in `repo` (highest version), or None when there is
    none. ValueError when one matches the fingerprint but not the symptom ids, or does not load."""
    found = text_model_version(repo, kb_fingerprint)
    if found is None:
        return None
    name, version = found
    key = (str(repo.resolve()), name, version, intra_op_threads, provider)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = load_symptom_text_model(repo, name, version, intra_op_threads, provider)
            for old in [k for k in _cache if k[:2] == key[:2] and k[2] < version]:
                del _cache[old]
            _cache[key] = model
    if list(model.table.symptom_ids) != list(symptom_ids):
        raise ValueError(f"{name} v{version} has the knowledge-base fingerprint {kb_fingerprint[:12]}... but other "
                         "symptom ids than the diagnosis tables")
    logger.info("free text for diagnosis: %s v%d (%d phrases, threshold %.3f)", name, version,
                len(model.table.phrases), model.threshold)
    return model
