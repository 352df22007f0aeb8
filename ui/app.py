"""The nui Gradio app: assistant, symptom checker, images and status pages over a running gRPC server.

    python -m ui.app --server 127.0.0.1:50051 [--port 7860] [--metrics-url http://127.0.0.1:8002/metrics]
    nui up                                    # starts the server and this app together (ui/up.py)

The app is a client of the server's public API only (ui/client.py); it loads no model. It waits for the
server to report SERVING, reads what the server offers, then builds the pages.
"""

from __future__ import annotations

import argparse
import os
import sys

# Gradio reports usage to its authors by default; nui runs offline and sends nothing anywhere.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from ui import assistant_page, image_page, status_page, symptom_page
from ui.client import NuiClient, NuiError
from ui.context import AppContext
from ui.tts import Speaker

TITLE = "nui: speech, pictures and symptoms"


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nServer `{ctx.client.target}`: everything below is answered by its gRPC API.")
        with gr.Tab("Assistant", id="assistant"):
            assistant_page.build(ctx)
        with gr.Tab("Symptom checker", id="symptoms"):
            symptom_page.build(ctx)
        with gr.Tab("Images", id="images"):
            image_page.build(ctx)
        with gr.Tab("Status", id="status"):
            status_page.build(ctx)
    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ui.app", description="The nui web app over a running server.")
    p.add_argument("--server", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--host", default="127.0.0.1", help="address the web app binds (default %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="web app port; 0 picks a free one")
    p.add_argument("--metrics-url", default=None, help="the server's Prometheus endpoint, for the status page")
    p.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the server to be SERVING")
    return p


def launch(ctx: AppContext, host: str, port: int) -> tuple[gr.Blocks, str]:
    """Start the app without blocking; returns it and its URL."""
    app = build_app(ctx)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port or None, prevent_thread_lock=True, quiet=True,
               show_error=True, theme=gr.themes.Default())
    return app, app.local_url or f"http://{host}:{port}/"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = NuiClient(args.server)
    try:
        client.wait_ready(args.wait_s)
        ctx = AppContext.connect(client, Speaker.find(), args.metrics_url)
    except NuiError as e:
        print(f"nui app: error: {e}", file=sys.stderr)
        return 1
    app, url = launch(ctx, args.host, args.port)
    print(f"app on {url}", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
