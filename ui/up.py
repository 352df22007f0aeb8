"""`nui up`: the gRPC server (every bundled model, ONNX Runtime on CPU) and the web app, together.

    nui up                                   # server on 127.0.0.1:50051, app on http://127.0.0.1:7860
    nui up --port 0 --app-port 0             # any free ports (the addresses are printed)
    nui up --repo model_repository --metrics-port 8002 --serve-arg=--max-batch-size=8

Starts `nui serve` as a child process, waits until its health service reports SERVING, then starts the
app in this process pointed at it, and prints `server on HOST:PORT`, `metrics on URL` and `app on URL`.
Ctrl-C or SIGTERM stops both: the app first, then the server (SIGTERM, so it drains in-flight calls;
killed if it has not exited after --stop-timeout-s). When the server exits on its own, the app stops
too and the exit status is the server's.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from ui.client import NuiClient, NuiError
from ui.tts import Speaker

PROG = "nui up"
LISTENING = re.compile(r"^listening on (\S+)$")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Start the nui gRPC server and the web app over it.")
    p.add_argument("--repo", type=Path, default=None, help="model repository (default: the bundled one)")
    p.add_argument("--host", default="127.0.0.1", help="address both bind (default %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default %(default)s)")
    p.add_argument("--app-port", type=int, default=7860, help="web app port; 0 picks a free one (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus port of the server, shown on the status page; 0 picks a free one (default)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `nui serve` (repeatable), e.g. --serve-arg=--max-batch-size=8")
    p.add_argument("--start-timeout-s", type=float, default=180.0, help="how long the server may take to load")
    p.add_argument("--stop-timeout-s", type=float, default=15.0)
    return p


class Stack:
    """The server child process and the app; `stop()` is idempotent and safe from a signal handler."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metrics_port = args.metrics_port or free_port(args.host)
        cmd = [sys.executable, "-m", "nui.cli", "serve", "--host", args.host, "--port", str(args.port),
               "--metrics-port", str(self.metrics_port), *args.serve_arg]
        if args.repo is not None:
            cmd += ["--repo", str(args.repo)]
        # The server gets its own process group: a Ctrl-C in the terminal reaches only us, and we stop
        # the server in order (app first) instead of both racing.
        self.server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.address: str | None = None
        self._listening = threading.Event()
        self._stopping = threading.Event()
        threading.Thread(target=self._relay, daemon=True, name="nui-up-server-log").start()

    def _relay(self) -> None:
        """Echo the server's stdout and notice its `listening on` line."""
        assert self.server.stdout is not None
        for line in self.server.stdout:
            match = LISTENING.match(line.strip())
            if match:
                self.address = match.group(1)
                self._listening.set()
            else:
                sys.stdout.write(f"[server] {line}")
        self._listening.set()  # exited before listening: wake the waiter

    def wait_serving(self) -> NuiClient:
        deadline = time.monotonic() + self.args.start_timeout_s
        if not self._listening.wait(self.args.start_timeout_s) or self.address is None:
            code = self.server.poll()
            raise NuiError("UNAVAILABLE", "the server exited during start-up (see its messages above)"
                           if code is not None else f"the server did not start in {self.args.start_timeout_s:g} s")
        client = NuiClient(self.address)
        client.wait_ready(max(1.0, deadline - time.monotonic()))
        return client

    def stop(self) -> int:
        """Stop the server (SIGTERM, then SIGKILL after the timeout); its exit status."""
        self._stopping.set()
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(self.args.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        return self.server.returncode


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stack = Stack(args)
    from ui.app import launch  # Gradio takes seconds to import: do it while the server loads its models
    from ui.context import AppContext

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    app = None
    try:
        client = stack.wait_serving()
        print(f"server on {stack.address}", flush=True)
        print(f"metrics on http://{args.host}:{stack.metrics_port}/metrics", flush=True)
        ctx = AppContext.connect(client, Speaker.find(), f"http://{args.host}:{stack.metrics_port}/metrics")
        app, url = launch(ctx, args.host, args.app_port or free_port(args.host))
        print(f"app on {url}", flush=True)
        print("Ctrl-C stops both.", flush=True)
        while not stop.wait(0.5):
            if stack.server.poll() is not None:
                print(f"{PROG}: the server exited (status {stack.server.returncode}); stopping the app",
                      file=sys.stderr)
                break
    except NuiError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        stack.stop()
        return 1
    finally:
        if app is not None:
            app.close()
        code = stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"{PROG}: stopped (server exit status {code})", flush=True)
    return 0 if stop.is_set() and code == 0 else (code or 1)
