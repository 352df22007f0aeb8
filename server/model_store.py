"""The served models of a repository while the server runs: warm-up, load, unload, and reload of new
versions without dropping a request.

    store = ModelStore(repo, speech, diagnosis, settings, metrics)   # speech/diagnosis: the served dicts
    store.add_loaded(speech_models, diagnosis_models)                # start-up: batchers, served at once
    await store.warm_up_all()                                        # one real run per version
    await store.load("speech_ctc")       # publish new versions found on disk, retire versions gone from it
    await store.unload("speech_ctc")     # KServe RepositoryModelUnload
    await store.poll_forever(5.0)        # `nui serve --poll-repository-s 5`: load() every model, every 5 s

A new version is loaded (checksums verified) and warmed up with one real run through its own batcher
*before* it enters the served dicts, so until then the old versions answer; version 0 ("latest")
requests switch to it the moment it is in. A retired version leaves the dicts first and keeps its
batcher open `retire_after_s` longer, so a request that looked it up just before still gets served; then
its batcher drains (queued items finish) and closes. A version that fails to load is logged and listed
UNAVAILABLE with the reason; the old versions keep serving and it is retried when its manifest changes.
An unloaded model stays unloaded (polling skips it) until it is loaded again explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

from engines.manifest import model_versions, read_manifest
from server.batcher import DynamicBatcher
from server.diagnosis import TASK as DIAGNOSIS_TASK
from server.diagnosis import DiagnosisServingModel
from server.diagnosis_service import ServedDiagnosisModel
from server.errors import RequestError, not_found
from server.metrics import ServerMetrics
from server.repository import load_model_version
from server.speech_ctc import TASK as SPEECH_TASK
from server.speech_ctc import SpeechCTCModel
from server.speech_service import ServedModel
from server.tensor_batch import tensor_batching, warmup_request

logger = logging.getLogger(__name__)

ServableModel = SpeechCTCModel | DiagnosisServingModel
TASKS = (SPEECH_TASK, DIAGNOSIS_TASK)  # what this store serves; other tasks have their own loaders
Served = ServedModel | ServedDiagnosisModel


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    intra_op_threads: int | None = None
    warmup_timeout_s: float = 60.0
    retire_after_s: float = 5.0  # a retired version's batcher stays open this long for late lookups


class ModelStore:
    """Owns the batchers of every served model version and changes the served dicts in place."""

    def __init__(self, repo: Path, speech: dict[str, dict[int, ServedModel]],
                 diagnosis: dict[str, dict[int, ServedDiagnosisModel]], settings: BatchSettings,
                 metrics: ServerMetrics) -> None:
        self.repo = Path(repo)
        self.speech = speech
        self.diagnosis = diagnosis
        self.settings = settings
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._failed: dict[tuple[str, int], tuple[tuple[int, ...], str]] = {}  # -> (folder stamp, reason)
        self._unloaded: set[str] = set()
        self._foreign: dict[tuple[str, int], str] = {}  # versions of other tasks -> their task
        self.on_change: Callable[[], Awaitable[None]] | None = None  # after models were added or retired
        self._retiring: set[asyncio.Task[None]] = set()  # each drains one retired batcher

    # -- what is served

    def served(self) -> dict[str, dict[int, Served]]:
        return {**cast(Mapping[str, dict[int, Served]], self.speech),
                **cast(Mapping[str, dict[int, Served]], self.diagnosis)}

    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        return [s.batcher for vs in self.served().values() for s in vs.values()]

    def index(self) -> list[tuple[str, str, str, str]]:
        """(model, version, state, reason) for every version on disk or loaded (KServe RepositoryIndex)."""
        rows: dict[tuple[str, int], tuple[str, str]] = {}
        if self.repo.is_dir():
            for folder in self.repo.iterdir():
                if folder.is_dir() and not folder.name.startswith("."):
                    for v in model_versions(self.repo, folder.name):
                        rows[(folder.name, v)] = ("UNAVAILABLE", self._why_not_loaded(folder.name, v))
        for (name, v), (_, reason) in self._failed.items():
            rows[(name, v)] = ("UNAVAILABLE", reason)
        for name, versions in self.served().items():
            for v in versions:
                rows[(name, v)] = ("READY", "")
        return [(n, str(v), state, reason) for (n, v), (state, reason) in sorted(rows.items())]

    def _why_not_loaded(self, name: str, version: int) -> str:
        try:
            task = read_manifest(self.repo / name / str(version), verify=False).task
        except ValueError as e:
            return str(e)
        if task not in TASKS:
            return f"a {task} model: served by its own API only"
        return "unloaded" if name in self._unloaded else "not loaded"

    # -- start-up

    def add_loaded(self, speech: Mapping[str, Mapping[int, SpeechCTCModel]],
                   diagnosis: Mapping[str, Mapping[int, DiagnosisServingModel]]) -> None:
        """Serve models loaded before start (the server reports NOT_SERVING until `warm_up_all`)."""
        models: list[ServableModel] = [m for vs in speech.values() for m in vs.values()]
        models += [m for vs in diagnosis.values() for m in vs.values()]
        for m in models:
            self._publish(self._serve(m), 0.0)

    async def warm_up_all(self) -> None:
        """One real run of every served version, one after another (they share the cores)."""
        for versions in self.served().values():
            for served in versions.values():
                await self._warm_up(served)

    # -- changes while serving

    async def load(self, name: str) -> None:
        """Serve every version of `name` on disk that is not served yet; retire served versions that are
        gone from disk. RequestError NOT_FOUND when the model has no version on disk, FAILED_PRECONDITION
        when a new version does not load (the served ones keep serving)."""
        before = self._versions()
        try:
            await self._load(name)
        finally:
            await self._changed(before)

    async def _load(self, name: str) -> None:
        async with self._lock:
            self._unloaded.discard(name)
            on_disk = model_versions(self.repo, name)
            if not on_disk:
                raise not_found(f"model {name[:100]!r} has no version folders under the repository")
            errors = []
            current = self.served().get(name, {})
            for version in on_disk:
                if version in current:
                    continue
                try:
                    await self._load_version(name, version)
                except ValueError as e:
                    errors.append(str(e))
            for version in sorted(set(current) - set(on_disk)):
                self._retire(name, version)
            if errors:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model {name!r}: a version did not load: {errors[0]}")
            if all((name, v) in self._foreign for v in on_disk):
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model {name!r} is a {self._foreign[(name, on_disk[-1])]} model; this API "
                                   f"serves {' and '.join(TASKS)} models")

    async def unload(self, name: str) -> None:
        before = self._versions()
        async with self._lock:
            versions = self.served().get(name)
            if not versions:
                raise not_found(f"model {name[:100]!r} is not loaded")
            self._unloaded.add(name)
            for version in sorted(versions):
                self._retire(name, version)
        await self._changed(before)

    def _versions(self) -> set[tuple[str, int]]:
        return {(n, v) for n, vs in self.served().items() for v in vs}

    async def _changed(self, before: set[tuple[str, int]]) -> None:
        if self.on_change is not None and self._versions() != before:
            await self.on_change()

    async def poll(self) -> None:
        """One pass: load() every model folder (except unloaded ones); failures are logged, not raised."""
        names = sorted({p.name for p in self.repo.iterdir() if p.is_dir() and not p.name.startswith(".")}
                       | set(self.served())) if self.repo.is_dir() else sorted(self.served())
        for name in names:
            on_disk = model_versions(self.repo, name)
            if name in self._unloaded or (on_disk and all((name, v) in self._foreign for v in on_disk)):
                continue
            try:
                await self.load(name)
            except RequestError as e:
                if e.code != grpc.StatusCode.NOT_FOUND or name in self.served():
                    logger.warning("repository poll: %s", e.message)

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll()
            except Exception:  # keep polling; the served models are untouched
                logger.exception("repository poll failed")

    async def close(self) -> None:
        """Drain every batcher (queued items finish), retiring ones at once."""
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()  # skips the grace wait; the task still drains its batcher
        await asyncio.gather(*retiring, *(b.close() for b in self.batchers()))

    # -- internals

    async def _load_version(self, name: str, version: int) -> None:
        folder = self.repo / name / str(version)
        mtime = _stamp(folder)
        failed = self._failed.get((name, version))
        if failed is not None and failed[0] == mtime:
            raise ValueError(failed[1])  # unchanged since it failed: do not load again
        started = time.monotonic()
        try:
            task = read_manifest(folder, verify=False).task
            if task not in TASKS:
                self._foreign[(name, version)] = task
                return
            model = await asyncio.to_thread(load_model_version, self.repo, name, version,
                                            self.settings.intra_op_threads)
        except (ValueError, OSError) as e:
            self._failed[(name, version)] = (mtime, str(e))
            logger.warning("model %s v%d did not load: %s", name, version, e)
            raise ValueError(str(e)) from e
        if model is None:
            raise ValueError(f"{name} v{version}: no loader for task {task!r}")
        self._failed.pop((name, version), None)
        served = self._serve(model)
        try:
            await self._warm_up(served)
        except Exception as e:
            await served.batcher.close()
            self._failed[(name, version)] = (mtime, f"warm-up failed: {type(e).__name__}")
            raise ValueError(f"{name} v{version} warm-up failed: {e}") from e
        self._publish(served, time.monotonic() - started)

    def _serve(self, model: ServableModel) -> Served:
        s = self.settings
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            tensor_batching(model), s.max_batch_size, s.max_queue_delay_ms, s.max_queue_size,
            name=f"{model.name}-v{model.version}", observer=self.metrics.observer(model.name, model.version))
        if isinstance(model, SpeechCTCModel):
            return ServedModel(model, batcher)
        return ServedDiagnosisModel(model, batcher)

    async def _warm_up(self, served: Served) -> None:
        """One real run of the version's batch function (its engine, ride-along path included), outside
        its batcher so that the batcher's statistics and metrics count client requests only."""
        run_batch = tensor_batching(served.model)
        request = warmup_request(served.model.engine.manifest)
        async with asyncio.timeout(self.settings.warmup_timeout_s):
            [result] = await asyncio.to_thread(run_batch, [request])
        if isinstance(result, Exception):
            raise result

    def _publish(self, served: Served, load_s: float) -> None:
        model = served.model
        manifest = model.engine.manifest
        if isinstance(served, ServedModel):
            self.speech.setdefault(model.name, {})[model.version] = served
        else:
            self.diagnosis.setdefault(model.name, {})[model.version] = served
        self.metrics.model_loaded(model.name, model.version, manifest.task, manifest.precision, manifest.engine,
                                  load_s, lambda b=served.batcher: b.queue_size)
        logger.info("serving %s v%d (loaded and warmed up in %.2f s)", model.name, model.version, load_s)

    def _retire(self, name: str, version: int) -> None:
        for table in (self.speech, self.diagnosis):
            versions = cast(dict[str, dict[int, Any]], table).get(name)
            if versions is not None and version in versions:
                served = versions.pop(version)
                if not versions:
                    del table[name]
                break
        else:
            return
        logger.info("retiring %s v%d (drains in %.1f s)", name, version, self.settings.retire_after_s)
        task = asyncio.get_running_loop().create_task(self._drain(name, version, served.batcher))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain(self, name: str, version: int, batcher: DynamicBatcher[Any, Any]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(self.settings.retire_after_s)
        await batcher.close()
        self.metrics.model_unloaded(name, version)
        logger.info("unloaded %s v%d", name, version)


def _stamp(folder: Path) -> tuple[int, ...]:
    """Changes whenever a file of the folder is added, removed or rewritten (a half-copied version that
    failed is retried once its copy completes)."""
    try:
        return tuple(sorted(f.stat().st_mtime_ns ^ hash(f.name) for f in folder.iterdir()))
    except OSError:
        return ()
