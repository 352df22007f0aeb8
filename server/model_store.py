"""The served models of a repository while the server runs: one path for every task to load, warm up,
reload, retire and unload a model version, without dropping a request.

    store = ModelStore(repo, settings, metrics)     # store.tables[task]: {name: {version: served}}
    store.add_loaded(load_repository(repo, tuple(TASKS)))  # start-up: batchers, served at once
    await store.warm_up_all()                      # one real run per version
    await store.load("speech_ctc")       # publish new versions found on disk, retire versions gone from it
    await store.unload("speech_ctc")     # KServe RepositoryModelUnload
    await store.poll_forever(5.0)        # `nui serve --poll-repository-s 5`: load() every model, every 5 s

`TASKS` says, per task (manifest `task`), how to load a version (on the configured execution provider),
build what serves it (its batcher or batchers), warm it up, and whether KServe `ModelInfer` takes the
engine's own tensors through its batcher (server/tensor_batch.py). Everything else is the same for every
task: a new version is loaded (checksums verified) and warmed up with one real run *before* it enters
`tables`, so until then the old versions answer; version 0 ("latest") requests switch to it the moment
it is in. A retired version leaves `tables` first and keeps its batchers open `retire_after_s` longer,
so a request that looked it up just before still gets served, and longer still while it is in use (an
open stream keeps its version); then its batchers drain (queued items finish) and close. A served
version whose dependency changed on disk (a diagnosis model's newer symptom_text model) is loaded again
and swapped in the same way. A version that fails to load is logged and listed UNAVAILABLE with the
reason; the old versions keep serving and it is retried when its files change. An unloaded model stays
unloaded (polling skips it) until it is loaded again explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from engines.engine import load_engine
from engines.manifest import model_versions, read_manifest, version_dir
from server.batcher import BatchObserver, DynamicBatcher
from server.captioner import TASK as CAPTIONER_TASK
from server.captioner import CaptionBatching, ServedCaptioner, load_captioner_version
from server.diagnosis import TASK as DIAGNOSIS_TASK
from server.diagnosis import DiagnosisServingModel, load_diagnosis_model
from server.diagnosis_service import ServedDiagnosisModel
from server.errors import RequestError, invalid_argument, not_found
from server.metrics import ServerMetrics
from server.speech_ctc import TASK as SPEECH_TASK
from server.speech_ctc import SpeechCTCModel, load_lm_decoder
from server.speech_service import ServedModel
from server.streaming import TASK as STREAMING_TASK
from server.streaming import ServedStreamingModel, is_flush, load_streaming_model, warmup_job
from server.symptom_text import TASK as SYMPTOM_TEXT_TASK
from server.symptom_text import text_model_version
from server.tensor_batch import tensor_batching, warmup_request

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a model folder of the repository

ObserverFor = Callable[[str, int], BatchObserver]  # (model label, version) -> batch observer (metrics)
Models = dict[str, dict[int, Any]]  # {name: {version: loaded model or served version}}

# Tasks whose versions are parts of other tasks' models: listed with this reason, never loaded alone.
PART_OF = {SYMPTOM_TEXT_TASK: "the free-text model of the diagnosis models of its knowledge base (no API of "
                              "its own; a new version reloads them)"}


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    intra_op_threads: int | None = None
    provider: str = "cpu"  # ONNX Runtime execution provider of every engine (engines/engine.py PROVIDERS)
    warmup_timeout_s: float = 60.0
    retire_after_s: float = 5.0  # a retired version's batchers stay open this long for late lookups
    max_in_use_s: float = 300.0  # and at most this much longer while in use (open streams)
    max_queue_wait_ms: float | None = None  # shed requests predicted to wait longer (server/admission.py)
    decode_workers: int = 0  # beam + LM decoding processes per speech version (server/decode_pool.py)


@dataclass(frozen=True)
class TaskServing:
    """How the store serves the versions of one task."""

    load: Callable[[Path, str, int, BatchSettings], Any]  # in a worker thread; ValueError when anything is off
    serve: Callable[[Any, BatchSettings, ObserverFor], Any]  # the served object: model + batchers (in the loop)
    warm_up: Callable[[Any], Awaitable[None]]  # one real run before the version is served
    batchers: Callable[[Any], list[DynamicBatcher[Any, Any]]]
    tensors: bool = False  # KServe ModelInfer: the engine's own tensors through the served `batcher`
    in_use: Callable[[Any], bool] = lambda served: False  # a retired version drains once this is False
    stale: Callable[[Path, Any], bool] = lambda repo, served: False  # load again: a dependency changed
    close: Callable[[Any], None] = lambda served: None  # after its batchers drained: free what else it holds


def _tensor_batcher(model: Any, s: BatchSettings, observer_for: ObserverFor, *, wait_budget: bool = True,
                    urgent: Callable[[Any], bool] | None = None) -> DynamicBatcher[Any, Any]:
    """The model's own items and KServe TensorRequests in one batcher (server/tensor_batch.py);
    `wait_budget`: shed beyond `s.max_queue_wait_ms` of predicted wait; `urgent`: items dispatched without
    waiting for batch-mates."""
    speech = isinstance(model, SpeechCTCModel)  # mixed-length clips: batches of similar lengths
    return DynamicBatcher(tensor_batching(model), s.max_batch_size, s.max_queue_delay_ms, s.max_queue_size,
                          name=f"{model.name}-v{model.version}", observer=observer_for(model.name, model.version),
                          size_of=model.padded_size if speech else None,
                          max_padding_waste=model.max_padding_waste if speech else 1.0,
                          max_concurrent_runs=model.auto_runs_at_once() if speech and _auto_threads(s) else 1,
                          max_queue_wait_ms=s.max_queue_wait_ms if wait_budget else None, urgent=urgent)


def _auto_threads(s: BatchSettings) -> bool:
    """ONNX Runtime threads are the server's choice (no --intra-op-threads, CPU): speech picks its own."""
    return s.intra_op_threads is None and s.provider == "cpu"


async def _run_once(served: Any, item: Any) -> None:
    """One real run of the version's batch function (its engine, ride-along path included), outside its
    batcher so that the batcher's statistics and metrics count client requests only."""
    [result] = await asyncio.to_thread(tensor_batching(served.model), [item])
    if isinstance(result, Exception):
        raise result


def _load_speech(repo: Path, name: str, version: int, s: BatchSettings) -> SpeechCTCModel:
    threads = SpeechCTCModel.auto_intra_op_threads if _auto_threads(s) else s.intra_op_threads
    engine = load_engine(repo, name, version, threads, provider=s.provider)
    return SpeechCTCModel(engine, load_lm_decoder(version_dir(repo, name, version), engine.manifest,
                                                  s.decode_workers))


def _load_diagnosis(repo: Path, name: str, version: int, s: BatchSettings) -> DiagnosisServingModel:
    engine = load_engine(repo, name, version, s.intra_op_threads, provider=s.provider)
    return load_diagnosis_model(engine, version_dir(repo, name, version), s.intra_op_threads, s.provider)


def _text_model_changed(repo: Path, served: ServedDiagnosisModel) -> bool:
    model = served.model
    newest = text_model_version(repo, str(model.engine.manifest.extras.get("kb_fingerprint", "")))
    current = None if model.text is None else (model.text.name, model.text.version)
    return newest != current


TASKS: dict[str, TaskServing] = {
    SPEECH_TASK: TaskServing(
        load=_load_speech,
        serve=lambda m, s, obs: ServedModel(m, _tensor_batcher(m, s, obs)),
        warm_up=lambda served: _run_once(served, warmup_request(served.model.engine.manifest)),
        batchers=lambda served: [served.batcher], tensors=True, close=lambda served: served.model.close()),
    DIAGNOSIS_TASK: TaskServing(
        load=_load_diagnosis,
        serve=lambda m, s, obs: ServedDiagnosisModel(m, _tensor_batcher(m, s, obs)),
        warm_up=lambda served: _run_once(served, warmup_request(served.model.engine.manifest)),
        batchers=lambda served: [served.batcher], tensors=True, stale=_text_model_changed),
    STREAMING_TASK: TaskServing(
        load=lambda repo, name, v, s: load_streaming_model(repo, name, v, s.intra_op_threads, s.provider,
                                                           s.decode_workers),
        # No wait budget: a refused chunk ends its stream; --max-streams bounds the streams' load instead.
        # Flush chunks go out at once: the end-to-final latency of a finished stream waits on them.
        serve=lambda m, s, obs: ServedStreamingModel(m, _tensor_batcher(m, s, obs, wait_budget=False,
                                                                        urgent=is_flush)),
        warm_up=lambda served: _run_once(served, warmup_job(served.model)),
        batchers=lambda served: [served.batcher], tensors=True,  # one chunk, the client holding the state
        in_use=lambda served: served.open_streams > 0, close=lambda served: served.model.close()),
    CAPTIONER_TASK: TaskServing(
        load=lambda repo, name, v, s: load_captioner_version(repo, name, v, s.intra_op_threads, s.provider),
        serve=lambda m, s, obs: ServedCaptioner.create(
            m, CaptionBatching(s.max_batch_size, s.max_queue_delay_ms, max_queue_size=s.max_queue_size), obs),
        warm_up=lambda served: served.warm_up(),
        batchers=lambda served: [served.encoder, served.steps]),  # two graphs, a beam search between
}


def load_repository(repo: Path, tasks: tuple[str, ...] = tuple(TASKS), intra_op_threads: int | None = None,
                    provider: str = "cpu", *, require_any: bool = True, decode_workers: int = 0
                    ) -> dict[str, Models]:
    """{task: {name: {version: model}}} for every version of `tasks` under `repo`, checksums verified.

    ValueError when the repository is missing or (`require_any`) holds no model of those tasks, or when any manifest,
    checksum, graph, language model, tokenizer or knowledge table does not match or load (a broken
    repository fails start-up). Versions of other tasks are skipped (with a warning when unknown)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ValueError(f"model repository {repo} does not exist")
    settings = BatchSettings(1, 0.0, 1, intra_op_threads, provider, decode_workers=decode_workers)
    loaded: dict[str, Models] = {task: {} for task in tasks}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = model_versions(repo, model_dir.name)
        if not versions:
            logger.warning("%s has no numbered version folders; skipped", model_dir)
        for version in versions:
            task = read_manifest(version_dir(repo, model_dir.name, version), verify=False).task
            if task in tasks:
                model = TASKS[task].load(repo, model_dir.name, version, settings)
                loaded[task].setdefault(model_dir.name, {})[version] = model
            elif task not in TASKS and task not in PART_OF:
                logger.warning("%s v%d is a %r model, which this server does not serve; skipped",
                               model_dir.name, version, task)
    if require_any and not any(loaded.values()):
        raise ValueError(f"model repository {repo} holds no {' or '.join(tasks)} model (expected "
                         "<model>/<version>/manifest.json)")
    return loaded


class ModelStore:
    """Owns the batchers of every served model version and changes `tables` in place (the servicers hold
    the same dicts)."""

    def __init__(self, repo: Path, settings: BatchSettings, metrics: ServerMetrics) -> None:
        self.repo = Path(repo)
        self.settings = settings
        self.metrics = metrics
        self.tables: dict[str, Models] = {task: {} for task in TASKS}
        self._lock = asyncio.Lock()
        self._failed: dict[tuple[str, int], tuple[tuple[int, ...], str]] = {}  # -> (folder stamp, reason)
        self._unloaded: set[str] = set()
        self._foreign: dict[tuple[str, int], str] = {}  # versions of tasks not served alone -> their task
        self.on_change: Callable[[], Awaitable[None]] | None = None  # after models were added or retired
        self._retiring: set[asyncio.Task[None]] = set()  # each drains one retired version

    # -- what is served

    def served(self) -> dict[str, dict[int, Any]]:
        """{name: {version: served}} over every task (a model name belongs to one task)."""
        return {name: versions for table in self.tables.values() for name, versions in table.items()}

    def tensor_served(self) -> dict[str, dict[int, Any]]:
        """The served models that KServe ModelInfer runs (their engine's tensors through their batcher)."""
        return {name: versions for task, table in self.tables.items() if TASKS[task].tensors
                for name, versions in table.items()}

    def task_of(self, name: str) -> str | None:
        return next((task for task, table in self.tables.items() if name in table), None)

    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        return [b for task, table in self.tables.items() for vs in table.values() for s in vs.values()
                for b in TASKS[task].batchers(s)]

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
        if task in PART_OF:
            return f"a {task} model: {PART_OF[task]}"
        if task not in TASKS:
            return f"a {task!r} model: no task this server serves ({', '.join(TASKS)})"
        return "unloaded" if name in self._unloaded else "not loaded"

    # -- start-up

    def add_loaded(self, models: Mapping[str, Mapping[str, Mapping[int, Any]]]) -> None:
        """Serve models loaded before start, {task: {name: {version: model}}} (the server reports
        NOT_SERVING until `warm_up_all`)."""
        for task, by_name in models.items():
            for versions in by_name.values():
                for model in versions.values():
                    self._publish(task, TASKS[task].serve(model, self.settings, self.metrics.observer), 0.0)

    async def warm_up_all(self) -> None:
        """One real run of every served version, one after another (they share the cores)."""
        for task, table in self.tables.items():
            for versions in table.values():
                for served in versions.values():
                    await self._warm_up(task, served)

    # -- changes while serving

    async def load(self, name: str) -> None:
        """Serve every version of `name` on disk that is not served yet, load again the served versions
        whose dependencies changed, retire served versions that are gone from disk. RequestError
        NOT_FOUND when the model has no version on disk, FAILED_PRECONDITION when a new version does not
        load (the served ones keep serving)."""
        before = self._versions()
        try:
            await self._load(name)
        finally:
            await self._changed(before)

    async def _load(self, name: str) -> None:
        if not MODEL_NAME.fullmatch(name):  # before any path is built from it: no "../", no "/etc"
            raise invalid_argument(f"model_name {name[:100]!r} is not a repository model name (1-100 letters, "
                                   "digits, '_', '.' or '-', starting with a letter or digit)")
        async with self._lock:
            self._unloaded.discard(name)
            on_disk = model_versions(self.repo, name)
            if not on_disk:
                raise not_found(f"model {name[:100]!r} has no version folders under the repository")
            errors = []
            task = self.task_of(name)
            current = self.served().get(name, {})
            for version in on_disk:
                if version in current and not (task is not None and TASKS[task].stale(self.repo, current[version])):
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
                other = self._foreign[(name, on_disk[-1])]
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model {name!r} is a {other} model, which is not served on its own: "
                                   f"{self._why_not_loaded(name, on_disk[-1]).split(': ', 1)[-1]}")

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
                part_of_others = bool(on_disk) and all((name, v) in self._foreign for v in on_disk)
                if not part_of_others and (e.code != grpc.StatusCode.NOT_FOUND or name in self.served()):
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
            task.cancel()  # skips the grace wait; the task still drains its batchers
        await asyncio.gather(*retiring, *(_close(TASKS[task], served) for task, table in self.tables.items()
                                          for versions in table.values() for served in versions.values()))

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
            model = await asyncio.to_thread(TASKS[task].load, self.repo, name, version, self.settings)
        except (ValueError, OSError) as e:
            self._failed[(name, version)] = (mtime, str(e))
            logger.warning("model %s v%d did not load: %s", name, version, e)
            raise ValueError(str(e)) from e
        self._failed.pop((name, version), None)
        served = TASKS[task].serve(model, self.settings, self.metrics.observer)
        try:
            await self._warm_up(task, served)
        except Exception as e:
            await _close(TASKS[task], served)
            self._failed[(name, version)] = (mtime, f"warm-up failed: {type(e).__name__}")
            raise ValueError(f"{name} v{version} warm-up failed: {e}") from e
        self._retire(name, version)  # the version it replaces, when loaded again
        self._publish(task, served, time.monotonic() - started)

    async def _warm_up(self, task: str, served: Any) -> None:
        async with asyncio.timeout(self.settings.warmup_timeout_s):
            await TASKS[task].warm_up(served)

    def _publish(self, task: str, served: Any, load_s: float) -> None:
        model = served.model
        manifest = model.engine.manifest
        self.tables[task].setdefault(model.name, {})[model.version] = served
        batchers = TASKS[task].batchers(served)
        self.metrics.model_loaded(model.name, model.version, task, manifest.precision, manifest.engine, load_s,
                                  lambda: sum(b.queue_size for b in batchers))
        logger.info("serving %s v%d (%s; loaded and warmed up in %.2f s)", model.name, model.version, task, load_s)

    def _retire(self, name: str, version: int) -> None:
        task = self.task_of(name)
        if task is None or version not in self.tables[task][name]:
            return
        versions = self.tables[task][name]
        served = versions.pop(version)
        if not versions:
            del self.tables[task][name]
        logger.info("retiring %s v%d (drains in %.1f s)", name, version, self.settings.retire_after_s)
        drain = asyncio.get_running_loop().create_task(self._drain(task, name, version, served))
        self._retiring.add(drain)
        drain.add_done_callback(self._retiring.discard)

    async def _drain(self, task: str, name: str, version: int, served: Any) -> None:
        row = TASKS[task]
        with contextlib.suppress(asyncio.CancelledError):  # close(): drain at once
            await asyncio.sleep(self.settings.retire_after_s)
            waited_s = 0.0
            while row.in_use(served) and waited_s < self.settings.max_in_use_s:
                await asyncio.sleep(0.1)
                waited_s += 0.1
        await _close(row, served)
        if version not in self.tables[task].get(name, {}):  # not loaded again meanwhile (its metrics stay)
            self.metrics.model_unloaded(name, version)
        logger.info("unloaded %s v%d", name, version)


async def _close(row: TaskServing, served: Any) -> None:
    """Drain a version's batchers (queued items finish), then free what else it holds (decode workers)."""
    await asyncio.gather(*(b.close() for b in row.batchers(served)))
    row.close(served)


def _stamp(folder: Path) -> tuple[int, ...]:
    """Changes whenever a file of the folder is added, removed or rewritten (a half-copied version that
    failed is retried once its copy completes)."""
    try:
        return tuple(sorted(f.stat().st_mtime_ns ^ hash(f.name) for f in folder.iterdir()))
    except OSError:
        return ()
