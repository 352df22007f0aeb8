"""The `nui` command as the end-to-end tests run it: a subcommand in a subprocess, and `nui serve` on a free
port for the length of a `with` block."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nui(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `nui ARGS` from the repository root; fails the test (with the output's tail) unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", "nui", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"nui {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@contextlib.contextmanager
def serving(repo: Path) -> Iterator[str]:
    """`nui serve --repo REPO --port 0`; yields its address once it listens, terminates it afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "nui", "serve", "--repo", str(repo), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line + (proc.stderr.read() if proc.stderr else "")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
