"""The status page: services and their health (gRPC health + reflection), and, when the server exposes
Prometheus metrics (`nui serve --metrics-port`), the models loaded with their versions and engines,
queue depths and request latencies.

Endpoint (for gradio_client): `/status` -> (services table, models table, latency table, message).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict

import gradio as gr
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from ui.client import NuiError
from ui.context import AppContext

SERVICE_COLUMNS = ["service", "health"]
MODEL_COLUMNS = ["model", "version", "task", "engine", "precision", "queue depth", "load s"]
LATENCY_COLUMNS = ["method", "requests", "mean ms"]


def read_metrics(url: str, timeout_s: float = 5.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(models, latency) tables from a Prometheus text endpoint; OSError when it cannot be read."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    models: dict[tuple[str, str], dict[str, object]] = {}
    depth: dict[tuple[str, str], float] = {}
    load_s: dict[tuple[str, str], float] = {}
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.labels.get("model", ""), s.labels.get("version", ""))
            if s.name == "nui_model_info" and s.value == 1:
                models[key] = {"task": s.labels.get("task", ""), "engine": s.labels.get("engine", ""),
                               "precision": s.labels.get("precision", "")}
            elif s.name == "nui_queue_depth":
                depth[key] = s.value
            elif s.name == "nui_model_load_seconds":
                load_s[key] = s.value
            elif s.name in ("nui_request_duration_seconds_sum", "nui_request_duration_seconds_count"):
                method = f"{s.labels.get('service', '')}/{s.labels.get('method', '')}"
                (sums if s.name.endswith("_sum") else counts)[method] += s.value
    model_rows = [(m, v, info["task"], info["engine"], info["precision"], depth.get((m, v), 0.0),
                   round(load_s.get((m, v), 0.0), 2)) for (m, v), info in sorted(models.items())]
    latency_rows = [(k, int(counts[k]), round(1000 * sums[k] / counts[k], 1)) for k in sorted(counts) if counts[k]]
    return pd.DataFrame(model_rows, columns=MODEL_COLUMNS), pd.DataFrame(latency_rows, columns=LATENCY_COLUMNS)


def status(ctx: AppContext) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    models = pd.DataFrame([], columns=MODEL_COLUMNS)
    latency = pd.DataFrame([], columns=LATENCY_COLUMNS)
    try:
        s = ctx.client.status()
    except NuiError as e:
        return pd.DataFrame([], columns=SERVICE_COLUMNS), models, latency, f"**Server unreachable:** {e.message}"
    services = pd.DataFrame(sorted(s.services.items()), columns=SERVICE_COLUMNS)
    lines = [f"Server {ctx.client.target}: **{'SERVING' if s.serving else 'NOT SERVING'}**, health round trip "
             f"{s.latency_ms:.1f} ms."]
    if ctx.metrics_url:
        try:
            models, latency = read_metrics(ctx.metrics_url)
            lines.append(f"Metrics from {ctx.metrics_url}.")
        except (OSError, urllib.error.URLError, ValueError) as e:
            lines.append(f"Metrics at {ctx.metrics_url} could not be read: {e}.")
    else:
        lines.append("No metrics endpoint given (start the server with `--metrics-port` and the app with "
                     "`--metrics-url`): models, queue depth and latency are not shown.")
    return services, models, latency, " ".join(lines)


def build(ctx: AppContext) -> None:
    message = gr.Markdown(elem_id="status-message")
    services = gr.Dataframe(headers=SERVICE_COLUMNS, label="Services", interactive=False, elem_id="status-services")
    models = gr.Dataframe(headers=MODEL_COLUMNS, label="Models loaded", interactive=False, elem_id="status-models")
    latency = gr.Dataframe(headers=LATENCY_COLUMNS, label="Request latency (server side, since start)",
                           interactive=False, elem_id="status-latency")
    refresh = gr.Button("Refresh", elem_id="status-refresh")

    def run() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
        return status(ctx)

    outputs = [services, models, latency, message]
    refresh.click(run, [], outputs, api_name="status")
    gr.Timer(5.0).tick(run, [], outputs, api_visibility="private")
