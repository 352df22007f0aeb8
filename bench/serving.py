"""Serving benchmark: one ONNX speech model behind nui (batching on / off), TorchServe and Triton, under load.

    python bench/serving.py                                   # bundled model_repository/speech_ctc, ~8 min
    python bench/serving.py --quick                           # 1 and 8 clients, 3 s windows, ~2 min
    python bench/serving.py --random-preset small --targets nui,torchserve --concurrency 8,32

Targets (`--targets`, default all four; one that cannot run here is skipped and named in the JSON):
- `nui`: `nui serve` with dynamic batching (`--max-batch-size 16 --max-queue-delay-ms 10`);
- `nui-nobatch`: `nui serve --max-batch-size 1` (one request per engine run);
- `torchserve`: TorchServe 0.12 (Java 17) with its dynamic batching (`batchSize` 16, `maxBatchDelay`
  10 ms, one worker) running bench/torchserve/handler.py; the model folder is built at start-up with
  `torch-model-archiver --archive-format no-archive` (version folder, handler, model-config.yaml);
- `triton`: a real Triton Inference Server 2.51 (PyTriton 0.7.0, bench/triton/server.py) with its dynamic
  batcher (max batch 16, 10 ms queue delay, one model instance); the batch reaches Python through
  Triton's Python backend stub and PyTriton's proxy (IPC per batch, part of what is measured).
`pip install -e '.[bench]'` installs TorchServe and PyTriton.

What each side computes per request (the same work, with nui's own code): decode the 16-bit WAV bytes
(`server.audio`), validate and resample to the model rate (`SpeechCTCModel.prepare`), pad the batch to
its longest clip, one ONNX Runtime run (`OnnxRuntimeEngine`, CPU), greedy CTC decoding of each valid
slice with its confidence (`SpeechCTCModel.run_batch`). nui answers a `RecognizeResponse`, TorchServe a
JSON string, Triton BYTES/INT32 tensors. Every server gets the same ONNX Runtime session options
(1 inter-op thread, sequential execution, no spinning). nui (both targets) is left to pick its threads
(unless `--nui-intra-op-threads N`: one batch at a time on N threads): its speech batcher then runs one
batch per core, each on one thread, and forms batches of similar clip lengths
(bench/results/batching_profile.md). TorchServe and Triton get the same threading: one worker / model
instance per core, each on one intra-op thread (with `--nui-intra-op-threads N`: one of N threads;
`--peer-instances` and `--intra-op-threads` override). Before the load each target transcribes every
clip once; `transcripts_match` in the JSON says whether all targets agreed.

Load: every target is started first and stays up (idle ones cost next to nothing); then for each C the
targets are measured one after another (in reverse order at every other level), so on a shared machine
they meet about the same background load.
This process (separate from every server) runs a `grpc.aio` client on 127.0.0.1: C workers
(`--concurrency`, default 1,8,32,64) send requests back to back, clips round-robin: nui's
`Speech/Recognize` (DECODER_GREEDY), TorchServe's gRPC `InferenceAPIsService/Predictions` (the WAV bytes
as input `data`; stubs compiled at run time from bench/torchserve/inference.proto), Triton's KServe v2
`ModelInfer` (tritonclient's generated stubs). Each run lasts `--warmup-s` + `--duration-s`, so request
counts are bounded by time and by C in flight. Throughput counts the requests completed in the measured
window, latency percentiles those started in it (bench/speech_ctc.py `summarize`); every non-OK status
is counted and makes the exit status 1.

Prints one table (with the mean batch size per engine run and the 1-minute load average at the start of
each run), writes `--out` JSON (every number, machine, load average at start and end, exact command,
each server's command and exit status) and a PNG of throughput and p99 latency vs concurrency next to
it. The client shares the CPUs with the servers: on a small machine its cost is part of the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import importlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as speech_bench  # noqa: E402
from proto import speech_pb2, speech_pb2_grpc  # noqa: E402
from server.speech_ctc import SpeechCTCModel  # noqa: E402

logger = logging.getLogger("bench.serving")

DEFAULT_OUT = ROOT / "bench" / "results" / "serving.json"
TORCHSERVE_DIR = ROOT / "bench" / "torchserve"
TRITON_SERVER = ROOT / "bench" / "triton" / "server.py"
TARGETS = ("nui", "nui-nobatch", "torchserve", "triton")




@dataclass(frozen=True)
class Settings:
    targets: tuple[str, ...]
    concurrency: tuple[int, ...]
    warmup_s: float
    duration_s: float
    request_timeout_s: float
    max_batch_size: int  # nui and TorchServe batching (nui-nobatch: 1)
    max_queue_delay_ms: int  # nui --max-queue-delay-ms and TorchServe maxBatchDelay
    intra_op_threads: int  # TorchServe's and Triton's; nui's with nui_intra_op_threads set
    peer_instances: int  # TorchServe workers / Triton model instances, each running its own batch
    nui_intra_op_threads: int | None  # None: nui's own choice (speech: 1 thread per run, a run per core)
    clips: int
    seed: int


def setup_of(target: str, settings: Settings) -> Any:
    """The target as a bench/speech_ctc.py `ServerSetup` (its name labels the rows)."""
    label, batch = {"nui": ("nui, batching", settings.max_batch_size),
                    "nui-nobatch": ("nui, batching off", 1),
                    "torchserve": ("TorchServe, batching", settings.max_batch_size),
                    "triton": ("Triton (PyTriton), batching", settings.max_batch_size)}[target]
    return speech_bench.ServerSetup(label, batch, float(settings.max_queue_delay_ms))


def missing(target: str) -> str | None:
    """Why `target` cannot run here, or None when it can."""
    if target == "torchserve":
        return torchserve_missing()
    if target == "triton":
        for module, package in (("pytriton", "nvidia-pytriton"), ("tritonclient", "tritonclient[grpc]")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed (pip install -e '.[bench]')"
    return None


def torchserve_missing() -> str | None:
    """Why TorchServe cannot run here, or None when it can."""
    if shutil.which("java") is None:
        return "TorchServe needs Java 17 (java is not on PATH)"
    for module, package in (("ts", "torchserve"), ("model_archiver", "torch-model-archiver"),
                            ("grpc_tools", "grpcio-tools")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install -e '.[bench]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------------
# TorchServe


class TorchServeProcess:
    """TorchServe serving `<version_dir>` through bench/torchserve/handler.py, all under `workdir`.

    Started in the foreground in its own session (the launcher, the JVM and the Python worker), so
    `stop` can signal exactly that process group; its pid file, logs and temp files stay in workdir."""

    def __init__(self, version_dir: Path, model: str, setup: Any, intra_op_threads: int, workdir: Path,
                 start_timeout_s: float = 180.0, workers: int = 1) -> None:
        self.model = model
        workdir.mkdir(parents=True)
        self._env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "LOG_LOCATION": str(workdir / "logs"),
                     "METRICS_LOCATION": str(workdir / "logs"),
                     "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        (workdir / "tmp").mkdir()
        store = self._archive(version_dir, setup, intra_op_threads, workdir, workers)
        self.grpc_port, inference_port, self._management_port, metrics_port = (_free_port() for _ in range(4))
        config = workdir / "config.properties"
        config.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{inference_port}",
            f"management_address=http://127.0.0.1:{self._management_port}",
            f"metrics_address=http://127.0.0.1:{metrics_port}",
            "grpc_inference_address=127.0.0.1", f"grpc_inference_port={self.grpc_port}",
            "grpc_management_address=127.0.0.1", f"grpc_management_port={_free_port()}",
            "disable_system_metrics=true",  # nui runs no metrics collector by default either
            "job_queue_size=256",  # nui's --max-queue-size default
            f"default_workers_per_model={workers}",
            "install_py_dep_per_model=false",
        ]) + "\n")
        torchserve = Path(sys.executable).with_name("torchserve")
        self.command = [str(torchserve), "--start", "--foreground", "--ncs", "--disable-token-auth",
                        "--model-store", str(store), "--ts-config", str(config), "--models", f"{model}={model}"]
        self._log_path = workdir / "torchserve.log"
        self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(self.command, cwd=workdir, env=self._env, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(start_timeout_s)
        except BaseException:
            self.stop(timeout_s=10)
            raise
        self.address = f"127.0.0.1:{self.grpc_port}"

    def _archive(self, version_dir: Path, setup: Any, intra_op_threads: int, workdir: Path, workers: int) -> Path:
        """`torch-model-archiver` output folder (no-archive format) in `<workdir>/store`."""
        stage = workdir / "stage"
        (stage / "1").mkdir(parents=True)
        for f in version_dir.iterdir():  # the archiver copies the files the links point at
            (stage / "1" / f.name).symlink_to(f.resolve())
        model_config = workdir / "model-config.yaml"
        model_config.write_text(
            f"minWorkers: {workers}\nmaxWorkers: {workers}\n"
            f"batchSize: {setup.max_batch_size}\nmaxBatchDelay: {int(setup.max_queue_delay_ms)}\n"
            "responseTimeout: 120\n"
            f"handler:\n  intra_op_threads: {intra_op_threads}\n")
        store = workdir / "store"
        store.mkdir()
        cmd = [str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", self.model,
               "--version", "1", "--handler", str(TORCHSERVE_DIR / "handler.py"), "--extra-files", str(stage),
               "--config-file", str(model_config), "--export-path", str(store), "--archive-format", "no-archive"]
        done = subprocess.run(cmd, cwd=workdir, env=self._env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({done.returncode}): {done.stderr[-2000:]}")
        return store

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the management API lists a READY worker for the model (the handler is initialized)."""
        url = f"http://127.0.0.1:{self._management_port}/models/{self.model}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self._proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):  # not listening yet / model not registered yet
                with urllib.request.urlopen(url, timeout=2) as answer:
                    described = json.loads(answer.read())
                if any(w.get("status") == "READY" for m in described for w in m.get("workers", [])):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe did not report a READY worker within {timeout_s:g} s: {self.log_tail()}")

    def log_tail(self, n_chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self._log_path.read_text(errors="replace")
        logs = self._log_path.parent / "logs" / "model_log.log"
        if logs.exists():
            text += "\n--- model_log.log ---\n" + logs.read_text(errors="replace")
        return text[-n_chars:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM to TorchServe's process group and wait; SIGKILL after timeout_s. The launcher's exit status
        (-15 when our SIGTERM ended it, which is the normal case: the launcher does not catch it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("TorchServe did not stop within %g s of SIGTERM; killing it", timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        with contextlib.suppress(ProcessLookupError):  # the JVM and worker outlive the launcher otherwise
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._log.close()
        return int(self._proc.returncode)


def torchserve_stubs(workdir: Path) -> tuple[ModuleType, ModuleType]:
    """inference_pb2 and inference_pb2_grpc compiled from bench/torchserve/inference.proto into workdir."""
    from grpc_tools import protoc

    out = workdir / "torchserve_stubs"
    out.mkdir(parents=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{TORCHSERVE_DIR}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(TORCHSERVE_DIR / "inference.proto")])
    if code != 0:
        raise RuntimeError(f"protoc failed on {TORCHSERVE_DIR / 'inference.proto'} ({code})")
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")
    finally:
        sys.path.remove(str(out))


# ----------------------------------------------------------------------------------------------------
# Clients: one `send(clip index)` per target, the transcript of each clip, the server's batch counts


@dataclass(frozen=True)
class BatchTotals:
    """Server-side counts so far: engine runs, the requests they carried, and (nui only, from its metrics)
    the summed run time of those batches and the summed queue wait of those requests."""

    runs: float
    items: float
    compute_s: float = float("nan")
    queue_s: float = float("nan")


@dataclass
class Client:
    send: Callable[[int], Awaitable[str]]  # -> the transcript
    batch_totals: Callable[[], BatchTotals]
    # CPU seconds the server process has used so far (nui only): its work, which other processes on a shared
    # machine do not inflate the way they inflate wall time
    server_cpu_s: Callable[[], float] | None = None


# nui's Prometheus histograms -> BatchTotals fields (their _count is the runs / requests they cover).
_NUI_TOTALS = {"nui_batch_size_count": "runs", "nui_batch_size_sum": "items",
               "nui_compute_duration_seconds_sum": "compute_s", "nui_queue_duration_seconds_sum": "queue_s"}


def nui_batch_totals(metrics_address: str, model: str) -> BatchTotals:
    """`model`'s batch counts and times from nui's Prometheus histograms (nui_batch_size, nui_compute_duration_seconds
    = one batch run: engine + decoding, nui_queue_duration_seconds = submit -> start of the item's run)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    totals = dict.fromkeys(_NUI_TOTALS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _NUI_TOTALS and sample.labels.get("model") == model:
                totals[_NUI_TOTALS[sample.name]] += sample.value
    return BatchTotals(**totals)


@contextlib.asynccontextmanager
async def client_for(target: str, server: Any, model: str, wavs: Sequence[bytes], timeout_s: float,
                     workdir: Path) -> AsyncIterator[Client]:
    """A `Client` for `target` over one gRPC channel to `server.address`."""
    options = [("grpc.max_receive_message_length", 32 << 20)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        if target == "torchserve":
            pb2, pb2_grpc = torchserve_stubs(workdir)
            ts_stub = pb2_grpc.InferenceAPIsServiceStub(channel)
            ts_requests = [pb2.PredictionsRequest(model_name=model, input={"data": wav}) for wav in wavs]
            totals = [0.0, 0.0]  # each answer names its batch's size: it was 1/size of an engine run

            async def send_ts(clip: int) -> str:
                answer = json.loads((await ts_stub.Predictions(ts_requests[clip], timeout=timeout_s)).prediction)
                totals[0] += 1.0 / answer["batch_size"]
                totals[1] += 1.0
                return str(answer["transcript"])

            yield Client(send_ts, lambda: BatchTotals(totals[0], totals[1]))
            return
        if target == "triton":
            yield triton_client(channel, model, wavs, timeout_s)
            return
        stub = speech_pb2_grpc.SpeechStub(channel)
        config = speech_pb2.RecognitionConfig(decoder=speech_pb2.DECODER_GREEDY, model=model)
        requests = [speech_pb2.RecognizeRequest(config=config, audio=wav) for wav in wavs]

        async def send_nui(clip: int) -> str:
            answer = await stub.Recognize(requests[clip], timeout=timeout_s)
            return str(answer.results[0].alternatives[0].transcript)

        yield Client(send_nui, functools.partial(nui_batch_totals, server.metrics_address, model), server.cpu_s)


def triton_client(channel: grpc.aio.Channel, model: str, wavs: Sequence[bytes], timeout_s: float) -> Client:
    """KServe v2 `ModelInfer` with the WAV file as a BYTES tensor [1, 1] (raw, length-prefixed)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    audio = service_pb2.ModelInferRequest.InferInputTensor(name="audio", datatype="BYTES", shape=[1, 1])
    requests = [service_pb2.ModelInferRequest(model_name=model, inputs=[audio],
                                              raw_input_contents=[struct.pack("<I", len(wav)) + wav])
                for wav in wavs]
    totals = [0.0, 0.0]

    async def send(clip: int) -> str:
        answer = await stub.ModelInfer(requests[clip], timeout=timeout_s)
        raw = dict(zip((o.name for o in answer.outputs), answer.raw_output_contents, strict=True))
        if raw["error"][4:]:
            raise RuntimeError(f"Triton answered clip {clip} with {raw['error'][4:].decode()!r}")
        totals[0] += 1.0 / int(np.frombuffer(raw["batch_size"], dtype="<i4")[0])
        totals[1] += 1.0
        return raw["transcript"][4:].decode()

    return Client(send, lambda: BatchTotals(totals[0], totals[1]))


@dataclass(frozen=True)
class TargetRow:
    row: Any  # bench/speech_ctc.py ServerRow
    mean_batch_size: float  # requests per engine run over the whole run (warm-up and drain included)
    mean_run_ms: float  # nui: wall time of one batch run (engine + decoding), NaN for the peers
    mean_queue_ms: float  # nui: a request's wait in the batcher queue, NaN for the peers
    server_cpu_ms: float  # nui: server CPU ms per answered request (all threads, warm-up and drain included)
    load_average_1m: float  # at the start of the run


async def measure(target: str, client: Client, clips: Sequence[Any], concurrency: int,
                  settings: Settings) -> TargetRow:
    """One closed-loop run of `concurrency` workers against one target."""
    setup = setup_of(target, settings)
    load_1m = os.getloadavg()[0]
    before = await asyncio.to_thread(client.batch_totals)
    cpu0 = client.server_cpu_s() if client.server_cpu_s is not None else float("nan")
    total_s = settings.warmup_s + settings.duration_s
    with tqdm(total=round(total_s, 1), desc=f"{setup.name}, C={concurrency}", unit="s", leave=False,
              disable=None, bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s{postfix}") as bar:
        result = await speech_bench.closed_loop(
            client.send, [c.duration_s for c in clips], concurrency, settings.warmup_s, settings.duration_s,
            functools.partial(speech_bench._show_progress, bar))
    after = await asyncio.to_thread(client.batch_totals)
    cpu1 = client.server_cpu_s() if client.server_cpu_s is not None else float("nan")
    row = speech_bench.summarize(setup, concurrency, result)
    cpu_ms = 1e3 * (cpu1 - cpu0) / row.total_requests if row.total_requests else float("nan")
    runs, items = after.runs - before.runs, after.items - before.items
    mean_batch = items / runs if runs > 0 else float("nan")
    run_ms = 1e3 * (after.compute_s - before.compute_s) / runs if runs > 0 else float("nan")
    queue_ms = 1e3 * (after.queue_s - before.queue_s) / items if items > 0 else float("nan")
    logger.info("%s C=%d: %.1f req/s, p50 %.0f ms, p99 %.0f ms, batch %.1f, run %.0f ms, queue %.0f ms, "
                "server CPU %.0f ms/request, %d errors", row.config, concurrency, row.req_per_s, row.p50_ms,
                row.p99_ms, mean_batch, run_ms, queue_ms, cpu_ms, row.error_count)
    return TargetRow(row, mean_batch, run_ms, queue_ms, cpu_ms, load_1m)


async def load_all(servers: dict[str, Any], model: str, clips: Sequence[Any], settings: Settings,
                   workdir: Path) -> tuple[dict[str, list[str]], list[TargetRow]]:
    """Each target's transcript of every clip (one request at a time), then for each concurrency level one
    run per target, back to back (order reversed at every other level): interleaved, so every target meets
    about the same background load."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {t: await stack.enter_async_context(
                       client_for(t, server, model, [c.wav for c in clips], settings.request_timeout_s, workdir))
                   for t, server in servers.items()}
        transcripts = {t: [await client.send(i) for i in range(len(clips))] for t, client in clients.items()}
        rows = []
        for level, c in enumerate(settings.concurrency):
            # Alternate the order, so a trend in the background load does not always favour the same target.
            turn = list(clients.items()) if level % 2 == 0 else list(reversed(clients.items()))
            rows += [await measure(t, client, clips, c, settings) for t, client in turn]
    order = list(servers)
    return transcripts, sorted(rows, key=lambda r: order.index(target_of(r.row.config, settings)))


def target_of(label: str, settings: Settings) -> str:
    return next(t for t in TARGETS if setup_of(t, settings).name == label)


@contextlib.contextmanager
def started(target: str, repo: Path, model: str, settings: Settings, workdir: Path) -> Iterator[Any]:
    """The target's server process (stopped on exit; its exit status lands in `.exit_code`)."""
    setup = setup_of(target, settings)
    version_dir = latest_version_dir(repo, model)
    if target == "torchserve":
        server: Any = TorchServeProcess(version_dir, model, setup, settings.intra_op_threads, workdir / target,
                                        workers=settings.peer_instances)
    elif target == "triton":
        # The Python backend stub loads the libpython LD_LIBRARY_PATH names first: this Python's.
        libdir = str(sysconfig.get_config_var("LIBDIR"))
        env = {**os.environ,
               "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
        command = [sys.executable, str(TRITON_SERVER), "--version-dir", str(version_dir), "--model", model,
                   "--grpc-port", str(_free_port()), "--max-batch-size", str(setup.max_batch_size),
                   "--max-queue-delay-ms", f"{setup.max_queue_delay_ms:g}",
                   "--intra-op-threads", str(settings.intra_op_threads),
                   "--instances", str(settings.peer_instances)]
        server = speech_bench.ServerProcess(repo, setup, settings.intra_op_threads, workdir / f"{target}.log",
                                            command=command, env=env)
    else:
        metrics_port = _free_port()  # batch sizes come from nui's own Prometheus histogram
        threads = settings.nui_intra_op_threads
        command = [sys.executable, "-m", "nui", "serve", "--repo", str(repo), "--host", "127.0.0.1", "--port", "0",
                   "--max-batch-size", str(setup.max_batch_size),
                   "--max-queue-delay-ms", f"{setup.max_queue_delay_ms:g}",
                   *(["--intra-op-threads", str(threads)] if threads is not None else []),
                   # closed-loop clients wait their turn, as with the peers' count-bounded queues; shedding
                   # by predicted wait (the serving default) is bench/overload.py's subject
                   "--max-queue-wait-ms", "0",
                   "--log-level", "WARNING", "--metrics-port", str(metrics_port)]
        server = speech_bench.ServerProcess(repo, setup, settings.intra_op_threads, workdir / f"{target}.log",
                                            command=command)
        server.metrics_address = f"127.0.0.1:{metrics_port}"
    try:
        yield server
    finally:
        server.exit_code = server.stop()
        if server.exit_code not in (0, -signal.SIGTERM if target == "torchserve" else 0):
            logger.warning("%s exited with %d: %s", target, server.exit_code, server.log_tail())


def run_targets(repo: Path, model: str, clips: Sequence[Any], settings: Settings,
                workdir: Path) -> tuple[list[TargetRow], list[dict[str, Any]]]:
    """Every target up at once, every concurrency level on each: the rows (by target, then C), and per
    target its command, exit status and transcripts."""
    with contextlib.ExitStack() as stack:
        servers = {t: stack.enter_context(started(t, repo, model, settings, workdir)) for t in settings.targets}
        logger.info("all servers ready: %s", ", ".join(settings.targets))
        transcripts, rows = asyncio.run(load_all(servers, model, clips, settings, workdir))
    return rows, [{"target": t, **asdict(setup_of(t, settings)), "command": shlex.join(server.command),
                   "exit_code": server.exit_code, "transcripts": transcripts[t]} for t, server in servers.items()]


def format_table(rows: Sequence[TargetRow]) -> str:
    """One line per (target, concurrency); errors: all non-OK (RESOURCE_EXHAUSTED in brackets); run ms,
    queue ms and CPU ms (nui only): one batch run's wall time, one request's wait in the queue, the server's
    CPU time per request."""
    width = max([10, *(len(r.row.config) for r in rows)])
    lines = [f"{'server':<{width}} {'C':>3} {'req/s':>7} {'audio s/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'batch':>6} {'run ms':>6} {'queue ms':>8} {'CPU ms':>6} {'errors':>7} {'load':>5}"]
    for t in rows:
        r = t.row
        lines.append(f"{r.config:<{width}} {r.concurrency:>3} {r.req_per_s:>7.1f} {r.audio_s_per_s:>9.1f} "
                     f"{r.p50_ms:>7.0f} {r.p99_ms:>7.0f} {t.mean_batch_size:>6.1f} {t.mean_run_ms:>6.0f} "
                     f"{t.mean_queue_ms:>8.0f} {t.server_cpu_ms:>6.0f} "
                     f"{f'{r.error_count} ({r.resource_exhausted})':>7} {t.load_average_1m:>5.1f}")
    return "\n".join(lines)


def _number(x: float) -> float | None:
    """NaN (a figure a target does not report) as JSON null."""
    return None if np.isnan(x) else x


def latest_version_dir(repo: Path, model: str) -> Path:
    """The model's highest version folder: what `nui serve` serves, and what the peers are given."""
    versions = [d for d in (repo / model).iterdir() if d.name.isdigit()]
    if not versions:
        raise ValueError(f"{repo / model} has no version folder")
    return max(versions, key=lambda d: int(d.name))


def single_model_repo(source: Path, model: str, tmp: Path) -> Path:
    """A repository holding only `model` (a link to it), so nui loads and warms up nothing else."""
    repo = tmp / "repo"
    repo.mkdir()
    (repo / model).symlink_to((source / model).resolve(), target_is_directory=True)
    return repo


# ----------------------------------------------------------------------------------------------------
# Command line


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"targets are {', '.join(TARGETS)}; got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/serving.py",
                                description="The same ONNX speech model behind nui (batching on/off) and "
                                            "TorchServe: throughput and p50/p99 latency vs concurrent clients.")
    p.add_argument("--repo", type=Path, default=None, help="model repository (default: the bundled one)")
    p.add_argument("--model", default="speech_ctc", help="model name in the repository (default %(default)s)")
    p.add_argument("--random-preset", default=None, metavar="PRESET",
                   help="benchmark a freshly exported random-weight model of this preset (e.g. tiny, small)")
    p.add_argument("--targets", type=_targets, default=TARGETS, help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; the PNG goes next to it")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 and 8 clients, 1 s warm-up, 3 s windows")
    p.add_argument("--concurrency", type=speech_bench._int_list, default=None, help="default 1,8,32,64")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per run (default 15)")
    p.add_argument("--warmup-s", type=float, default=None, help="warm-up seconds per run (default 3)")
    p.add_argument("--request-timeout-s", type=float, default=60.0, help="deadline per request")
    p.add_argument("--max-batch-size", type=int, default=16, help="nui and TorchServe batch limit")
    p.add_argument("--max-queue-delay-ms", type=int, default=10,
                   help="nui --max-queue-delay-ms and TorchServe maxBatchDelay (default %(default)s)")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="ONNX Runtime intra-op threads of TorchServe and Triton (default: as nui's speech runs)")
    p.add_argument("--peer-instances", type=int, default=None,
                   help="TorchServe workers / Triton model instances (default: as many as nui runs batches at once)")
    p.add_argument("--nui-intra-op-threads", type=int, default=None,
                   help="nui serve --intra-op-threads (one run of N threads at a time); default: not given, nui's "
                        "speech batcher then runs one batch per core on one thread each")
    p.add_argument("--clips", type=int, default=len(speech_bench.SENTENCES), help="how many of the 16 clips")
    p.add_argument("--seed", type=int, default=0, help="prosody of the clips and random weights")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    warmup_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 3.0)
    duration_s = args.duration_s if args.duration_s is not None else (3.0 if args.quick else 15.0)
    concurrency = args.concurrency or ((1, 8) if args.quick else (1, 8, 32, 64))
    # The peers get the threading nui's speech batcher uses: with nui left to choose, one ONNX Runtime
    # thread per run and one run per core (TorchServe workers / Triton instances); with
    # --nui-intra-op-threads N, one run of N threads. --intra-op-threads / --peer-instances override.
    auto = args.nui_intra_op_threads is None
    threads = args.intra_op_threads if args.intra_op_threads is not None else \
        SpeechCTCModel.auto_intra_op_threads if auto else args.nui_intra_op_threads
    instances = args.peer_instances if args.peer_instances is not None else \
        SpeechCTCModel.auto_runs_at_once() if auto else 1
    if warmup_s < 0 or duration_s <= 0 or args.request_timeout_s <= 0:
        raise ValueError("--warmup-s must be >= 0, --duration-s and --request-timeout-s > 0")
    if args.nui_intra_op_threads is not None and args.nui_intra_op_threads < 1:
        raise ValueError("--nui-intra-op-threads must be >= 1")
    if args.max_batch_size < 1 or args.max_queue_delay_ms < 0 or threads < 1 or instances < 1:
        raise ValueError("--max-batch-size, --intra-op-threads and --peer-instances must be >= 1, "
                         "--max-queue-delay-ms >= 0")
    return Settings(targets=args.targets, concurrency=concurrency, warmup_s=warmup_s, duration_s=duration_s,
                    request_timeout_s=args.request_timeout_s, max_batch_size=args.max_batch_size,
                    max_queue_delay_ms=args.max_queue_delay_ms, intra_op_threads=threads, peer_instances=instances,
                    nui_intra_op_threads=args.nui_intra_op_threads, clips=args.clips,
                    seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python", "bench/serving.py", *argv])
    skipped: dict[str, str] = {}
    try:
        settings = settings_from_args(args)
        for target in settings.targets:
            if (why := missing(target)) is not None:
                logger.warning("skipping %s: %s", target, why)
                skipped[target] = why
        settings = Settings(**{**asdict(settings), "targets": tuple(t for t in settings.targets if t not in skipped)})
        if not settings.targets:
            raise ValueError(f"no target can run here: {skipped}")
        started_at = time.perf_counter()
        machine = speech_bench.machine_info()
        with speech_bench.model_source(args, settings.seed) as source, \
                tempfile.TemporaryDirectory(prefix="nui-bench-serving-") as tmp:
            version_dir = latest_version_dir(source.repo, source.model)
            manifest = json.loads((version_dir / "manifest.json").read_text())
            clips = speech_bench.make_clips(settings.clips, settings.seed)
            logger.info("synthesized %d clips, %.1f s of audio", len(clips), sum(c.duration_s for c in clips))
            repo = single_model_repo(source.repo, source.model, Path(tmp))
            rows, servers = run_targets(repo, source.model, clips, settings, Path(tmp))
    except (ValueError, OSError, RuntimeError) as e:  # bad flags or repository, synthesis, server start-up
        print(f"bench/serving.py: error: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    reference = servers[0]["transcripts"]
    report = {
        "benchmark": "serving", "command": command, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - started_at,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "model": {"repo": str(source.repo), "name": source.model, "version": int(version_dir.name),
                  "source": source.source, "config": manifest["config"], "precision": manifest.get("precision")},
        "settings": asdict(settings), "skipped": skipped,
        # nui's speech batcher: batches of similar clip lengths (server/batcher.py size_of), and with the
        # threads left to it one batch running per core on one ONNX Runtime thread each
        "nui_batching": {"size_of": "samples", "max_padding_waste": SpeechCTCModel.max_padding_waste,
                         "intra_op_threads": settings.nui_intra_op_threads or SpeechCTCModel.auto_intra_op_threads,
                         "concurrent_runs": 1 if settings.nui_intra_op_threads else SpeechCTCModel.auto_runs_at_once()},
        "peer_instances": settings.peer_instances,  # TorchServe workers / Triton model instances
        "onnxruntime_settings": {"intra_op_num_threads": settings.intra_op_threads,  # the peers'; nui: above
                                 "inter_op_num_threads": 1,
                                 "execution_mode": "sequential", "allow_spinning": 0, "provider": "CPU"},
        "clips": [{"voice": c.voice_id, "text": c.text, "duration_s": c.duration_s} for c in clips],
        "transcripts_match": all(s["transcripts"] == reference for s in servers),
        "servers": servers,
        "rows": [{**asdict(t.row), "error_count": t.row.error_count, "mean_batch_size": t.mean_batch_size,
                  "mean_run_ms": _number(t.mean_run_ms), "mean_queue_ms": _number(t.mean_queue_ms),
                  "server_cpu_ms_per_request": _number(t.server_cpu_ms),
                  "load_average_1m_at_start": t.load_average_1m} for t in rows],
    }
    png = args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        speech_bench.plot([t.row for t in rows], png,
                          f"{source.model} ({source.source}): one ONNX model, {len(servers)} servers; "
                          f"{machine['cpus_usable']} CPUs, {settings.intra_op_threads} ORT threads")
        report["plot"] = str(png)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -e '.[train]'); no plot")
        report["plot"] = None
    speech_bench.write_json(args.out, report)
    load_end = os.getloadavg()[0]
    print(f"\ntranscripts match across targets: {report['transcripts_match']}; load average (1 min) "
          f"{machine['load_average_at_start'][0]:.1f} at start, {load_end:.1f} at end")
    print(f"wrote {args.out}" + (f" and {png}" if report["plot"] else ""))
    failed = sum(t.row.error_count for t in rows)
    if failed:
        print(f"bench/serving.py: {failed} requests failed (see 'rows' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
