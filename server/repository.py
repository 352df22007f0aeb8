"""Loading a model repository for serving, and looking a requested model up in what was loaded.

A repository holds `<repo>/<model>/<version>/{manifest.json, model.onnx, ...}` (see engines/manifest.py).
Every version of every model is loaded at start-up, with each file's sha256 checked, so a broken
repository fails before the server reports SERVING.

    models = load_speech_models(default_repo())
    model = resolve(models, "speech_ctc", 0)  # 0: the highest version
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from engines.engine import load_engine
from engines.manifest import model_versions, read_manifest, version_dir
from server.captioner import TASK as CAPTIONER_TASK
from server.diagnosis import TASK as DIAGNOSIS_TASK
from server.diagnosis import DiagnosisServingModel, load_diagnosis_model
from server.errors import invalid_argument, not_found
from server.speech_ctc import TASK, SpeechCTCModel, load_lm_decoder
from server.streaming import TASK as STREAMING_TASK
from server.symptom_text import TASK as SYMPTOM_TEXT_TASK

# Tasks whose models other loaders pick up (server/streaming.py, server/captioner.py, server/symptom_text.py
# with the diagnosis models): not warned about.
OTHER_TASKS = (STREAMING_TASK, CAPTIONER_TASK, SYMPTOM_TEXT_TASK)

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "speech_ctc"

M = TypeVar("M")


def default_repo() -> Path:
    """The model repository bundled with the source tree: `<repo root>/model_repository`."""
    return Path(__file__).resolve().parent.parent / "model_repository"


def load_speech_models(repo: Path,
                       intra_op_threads: int | None = None) -> dict[str, dict[int, SpeechCTCModel]]:
    """{model name: {version: model}} for every speech_ctc model version under `repo`.

    Models of other tasks are skipped (with a warning unless they are diagnosis models); ValueError when
    the repository is missing, holds no speech model, or any manifest, checksum, ONNX graph or language
    model does not match or load.
    """
    speech, _ = load_models(repo, intra_op_threads, tasks=(TASK,))
    return speech


def load_models(repo: Path, intra_op_threads: int | None = None,
                tasks: tuple[str, ...] = (TASK, DIAGNOSIS_TASK)
                ) -> tuple[dict[str, dict[int, SpeechCTCModel]], dict[str, dict[int, DiagnosisServingModel]]]:
    """(speech models, diagnosis models), each {model name: {version: model}}, of the given tasks.

    ValueError when the repository is missing or holds no model of those tasks, or when any manifest,
    checksum, ONNX graph, language model or knowledge table does not match or load.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise ValueError(f"model repository {repo} does not exist")
    speech: dict[str, dict[int, SpeechCTCModel]] = {}
    diagnosis: dict[str, dict[int, DiagnosisServingModel]] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = model_versions(repo, model_dir.name)
        if not versions:
            logger.warning("%s has no numbered version folders; skipped", model_dir)
            continue
        for version in versions:
            model = load_model_version(repo, model_dir.name, version, intra_op_threads, tasks)
            if isinstance(model, SpeechCTCModel):
                speech.setdefault(model.name, {})[version] = model
            elif model is not None:
                diagnosis.setdefault(model.name, {})[version] = model
    if not speech and not diagnosis and not _holds_task(repo, OTHER_TASKS):
        raise ValueError(f"model repository {repo} holds no {' or '.join(tasks)} model (expected "
                         "<model>/<version>/manifest.json)")
    return speech, diagnosis


def _holds_task(repo: Path, tasks: tuple[str, ...]) -> bool:
    """Whether any model version under `repo` is of one of `tasks` (loaded elsewhere)."""
    return any(read_manifest(version_dir(repo, d.name, v), verify=False).task in tasks
               for d in repo.iterdir() if d.is_dir() and not d.name.startswith(".")
               for v in model_versions(repo, d.name))


def load_model_version(repo: Path, name: str, version: int, intra_op_threads: int | None = None,
                       tasks: tuple[str, ...] = (TASK, DIAGNOSIS_TASK)
                       ) -> SpeechCTCModel | DiagnosisServingModel | None:
    """One model version, checksums verified; None when its task is not among `tasks` (a warning unless
    it is a task this server knows). ValueError when anything does not match or load."""
    folder = version_dir(repo, name, version)
    task = read_manifest(folder, verify=False).task
    if task not in tasks:
        if task not in (TASK, DIAGNOSIS_TASK, *OTHER_TASKS):
            logger.warning("%s v%d is a %r model; this server serves %s only; skipped",
                           name, version, task, " and ".join(map(repr, tasks)))
        return None
    engine = load_engine(repo, name, version, intra_op_threads)
    if task == TASK:
        return SpeechCTCModel(engine, load_lm_decoder(folder, engine.manifest))
    return load_diagnosis_model(engine, folder)


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
