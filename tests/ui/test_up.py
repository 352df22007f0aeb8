"""`nui up` as a person runs it: the addresses printed, both answer, Ctrl-C stops both."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ui.conftest import ROOT
from ui.client import NuiClient


def start_up(repo: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "nui.cli", "up", "--repo", str(repo), "--port", "0",
                             "--app-port", "0", "--serve-arg=--intra-op-threads=1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "app" not in found:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.match(r"(server|metrics|app) on (\S+)$", line.strip()):
            found[m.group(1)] = m.group(2)
    return proc, found


@pytest.mark.slow
def test_up_starts_and_ctrl_c_stops_both(ui_repo: Path) -> None:
    proc, found = start_up(ui_repo)
    try:
        assert set(found) == {"server", "metrics", "app"}, found
        with NuiClient(found["server"]) as client:
            assert client.health() == "SERVING"
        with urllib.request.urlopen(found["app"], timeout=10) as page:
            assert page.status == 200 and b"nui" in page.read()
        with urllib.request.urlopen(found["metrics"], timeout=10) as metrics:
            assert b"nui_server_ready 1.0" in metrics.read()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (SIGTERM takes the same path)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "nui up: stopped (server exit status 0)" in out
    with NuiClient(found["server"], timeout_s=2) as client, pytest.raises(Exception, match="the server is unavailable"):
        client.health()
    with pytest.raises(OSError):
        urllib.request.urlopen(found["app"], timeout=5)


def test_up_reports_a_server_that_cannot_start(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nui.cli", "up", "--repo", str(tmp_path / "missing"), "--port",
                           "0", "--app-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "nui up: error: the server exited during start-up" in done.stderr
