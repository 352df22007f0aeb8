"""Loading a model repository, and looking a requested model up in what was loaded.

A repository holds `<repo>/<model>/<version>/{manifest.json, model.onnx, ...}` (see engines/manifest.py).
The server loads it through server/model_store.py (every task, one path); the functions here are for
one-shot tools that want the loaded models of one task:

    models = load_speech_models(default_repo())
    model = resolve(models, "speech_ctc", 0)  # 0: the highest version
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from server.diagnosis import TASK as DIAGNOSIS_TASK
from server.diagnosis import DiagnosisServingModel
from server.errors import invalid_argument, not_found
from server.speech_ctc import TASK, SpeechCTCModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "speech_ctc"

M = TypeVar("M")


def default_repo() -> Path:
    """The model repository bundled with the source tree: `<repo root>/model_repository`."""
    return Path(__file__).resolve().parent.parent / "model_repository"


def load_speech_models(repo: Path,
                       intra_op_threads: int | None = None) -> dict[str, dict[int, SpeechCTCModel]]:
    """{model name: {version: model}} for every speech_ctc model version under `repo`.

    Models of other tasks are skipped; ValueError when the repository is missing, holds no speech
    model, or any manifest, checksum, ONNX graph or language model does not match or load.
    """
    speech, _ = load_models(repo, intra_op_threads, tasks=(TASK,))
    return speech


def load_models(repo: Path, intra_op_threads: int | None = None,
                tasks: tuple[str, ...] = (TASK, DIAGNOSIS_TASK), provider: str = "cpu"
                ) -> tuple[dict[str, dict[int, SpeechCTCModel]], dict[str, dict[int, DiagnosisServingModel]]]:
    """(speech models, diagnosis models), each {model name: {version: model}}, of the given tasks
    (server.model_store.load_repository: ValueError when none is there or any does not load)."""
    from server.model_store import load_repository  # the store imports the servicers, which import us

    loaded = load_repository(repo, tasks, intra_op_threads, provider)
    return loaded.get(TASK, {}), loaded.get(DIAGNOSIS_TASK, {})


def load_task_models(repo: Path, task: str, intra_op_threads: int | None = None,
                     provider: str = "cpu") -> dict[str, dict[int, Any]]:
    """{model name: {version: model}} of one task under `repo`, {} when it holds none (e.g. "captioner",
    "speech_ctc_streaming"); ValueError when the repository is missing or a version does not load."""
    from server.model_store import load_repository

    return load_repository(repo, (task,), intra_op_threads, provider, require_any=False)[task]


def resolve(models: Mapping[str, Mapping[int, M]], name: str, version: int) -> M:
    """The requested model; `name` "" means DEFAULT_MODEL and `version` 0 the highest. RequestError
    NOT_FOUND names what is loaded."""
    name = name or DEFAULT_MODEL
    if version < 0:
        raise invalid_argument(f"config.model_version is {version}; use 0 (latest) or a positive version")
    versions = models.get(name)
    if not versions:
        raise not_found(f"config.model {name!r} is not loaded; loaded models: {sorted(models)}")
    if version == 0:
        return versions[max(versions)]
    if version not in versions:
        raise not_found(f"config.model_version {version} of {name!r} is not loaded; loaded versions: "
                        f"{sorted(versions)}")
    return versions[version]


def describe(models: Mapping[str, Mapping[int, object]]) -> str:
    """"speech_ctc v1,2; other v3" for logs and the start-up line."""
    return "; ".join(f"{name} v{','.join(str(v) for v in sorted(vs))}" for name, vs in sorted(models.items()))
