"""Prometheus metrics of one server, in its own registry, served over HTTP on request.

    nui serve --metrics-port 8002         # then: curl 127.0.0.1:8002/metrics

What is measured (all names start with `nui_`):
- requests_total{service,method,code} and request_duration_seconds{service,method}: every RPC, counted
  by the server interceptor (server/interceptors.py), health and reflection included;
- queue_duration_seconds / compute_duration_seconds / batch_size {model,version}: every engine run of
  a batcher (fed by its `observer`, server/batcher.py BatchRecord), and queue_depth{model,version};
- shed_requests_total{model,version,reason}: requests a batcher refused at admission (server/batcher.py
  DropRecord): queue_full (--max-queue-size items waiting), queue_wait (predicted wait over
  --max-queue-wait-ms), deadline (the caller's deadline falls before the predicted answer);
- expired_requests_total{model,version}: requests dropped because their deadline passed before their run;
- streams_in_flight{service}: open streams; a streaming servicer wraps each stream in `metrics.stream(...)`;
- model_info{model,version,task,precision,engine} (1 while loaded) and model_load_seconds{model,version};
- server_ready: 1 once every model is loaded and warmed up.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from server.batcher import BatchObserver, BatchRecord, DropRecord

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The server's metrics; `serve_http` exposes them. Safe to use from the batchers' threads."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("nui_requests", "RPCs answered, by final status code",
                                ["service", "method", "code"], registry=r)
        self.request_seconds = Histogram("nui_request_duration_seconds", "RPC wall time in the server",
                                         ["service", "method"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.queue_seconds = Histogram("nui_queue_duration_seconds", "time an item waited in the batcher queue",
                                       ["model", "version"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.compute_seconds = Histogram("nui_compute_duration_seconds", "time of one batch run (engine + "
                                         "pre/post-processing in the batch)", ["model", "version"],
                                         buckets=_LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("nui_batch_size", "items per engine run", ["model", "version"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.failed_batches = Counter("nui_failed_batches", "batch runs that raised as a whole (then re-run "
                                      "one by one)", ["model", "version"], registry=r)
        self.shed = Counter("nui_shed_requests", "requests refused at admission, by reason (queue_full, "
                            "queue_wait, deadline)", ["model", "version", "reason"], registry=r)
        self.expired = Counter("nui_expired_requests", "requests dropped because their deadline passed before "
                               "their run", ["model", "version"], registry=r)
        self.queue_depth = Gauge("nui_queue_depth", "items waiting in the batcher queue", ["model", "version"],
                                 registry=r)
        self.streams = Gauge("nui_streams_in_flight", "open streaming RPCs", ["service"], registry=r)
        self.model_info = Gauge("nui_model_info", "1 while the model version is loaded",
                                ["model", "version", "task", "precision", "engine"], registry=r)
        self.model_load_seconds = Gauge("nui_model_load_seconds", "load + warm-up time of the model version",
                                        ["model", "version"], registry=r)
        self.ready = Gauge("nui_server_ready", "1 once every model is loaded and warmed up", registry=r)
        self._model_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._http: Any = None
        self._lock = threading.Lock()

    def observer(self, model: str, version: int) -> BatchObserver:
        """A batcher observer feeding the queue, compute, batch-size, shed and expired metrics of one model
        version."""
        labels = (model, str(version))
        queue, compute, size = (self.queue_seconds.labels(*labels), self.compute_seconds.labels(*labels),
                                self.batch_size.labels(*labels))
        failed = self.failed_batches.labels(*labels)
        expired = self.expired.labels(*labels)

        def observe(record: BatchRecord | DropRecord) -> None:
            if isinstance(record, DropRecord):
                if record.reason == "expired":
                    expired.inc()
                else:
                    self.shed.labels(*labels, record.reason).inc()
                return
            for wait_s in record.queue_s:
                queue.observe(wait_s)
            compute.observe(record.compute_s)
            size.observe(record.size)
            if record.failed:
                failed.inc()

        return observe

    def model_loaded(self, model: str, version: int, task: str, precision: str, engine: str, load_s: float,
                     queue_size: Any) -> None:
        """Record a loaded model version; `queue_size()` is read at every scrape."""
        labels = (model, str(version), task, precision, engine)
        with self._lock:
            self._model_labels[(model, str(version))] = labels
        self.model_info.labels(*labels).set(1)
        self.model_load_seconds.labels(model, str(version)).set(load_s)
        self.queue_depth.labels(model, str(version)).set_function(queue_size)

    def model_unloaded(self, model: str, version: int) -> None:
        key = (model, str(version))
        with self._lock:
            labels = self._model_labels.pop(key, None)
        if labels is not None:
            self.model_info.remove(*labels)
        for gauge in (self.model_load_seconds, self.queue_depth):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)

    def rpc_done(self, service: str, method: str, code: str, duration_s: float) -> None:
        self.requests.labels(service, method, code).inc()
        self.request_seconds.labels(service, method).observe(duration_s)

    @contextlib.contextmanager
    def stream(self, service: str) -> Iterator[None]:
        """Count one open stream of `service` while the block runs (for streaming servicers)."""
        gauge = self.streams.labels(service)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def serve_http(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: any free port) in a daemon thread; returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
