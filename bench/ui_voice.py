"""Voice round trip of the web app: end of speech -> reply text shown, p50/p95, through `nui up`.

    python bench/ui_voice.py [--repo model_repository] [--rounds 10] [--out bench/results/ui_voice.json]

Starts the stack as a person does (`nui up --port 0 --app-port 0`, a child process: gRPC server + Gradio
app), then drives the app with gradio_client the way the page does after the person stops talking: the
recording (a WAV of an espeak-ng sentence) is uploaded and the `/hear` endpoint (Recognize -> intent ->
dialog, incl. Diagnose or Caption calls) returns the transcript and the reply text. The clock starts when
the recording is complete (end of speech) and stops when the reply text is back: upload, transcription,
dialog and the app's own overhead are inside; browser rendering is not. Also measured: `/speak` (the
reply's speech synthesis, which the page runs after showing the text), typed input (`/ask`), and a bare
gRPC `Recognize` of the same clips (what the server alone costs).

Each round sends every sentence once, in a fresh app session. Prints a table, writes JSON (numbers,
machine, repository, exact command) to --out. The client shares the CPU with the server and the app.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [  # (text, what the dialog does with it)
    ("what can you do", "help"),
    ("i have a fever and a cough", "symptoms: Diagnose"),
    ("yes", "answer: Diagnose"),
    ("what is in this picture", "describe image"),
    ("thank you", "small talk"),
]


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def start_stack(repo: Path | None) -> tuple[subprocess.Popen[str], str, str]:
    cmd = [sys.executable, "-m", "nui.cli", "up", "--port", "0", "--app-port", "0"]
    if repo is not None:
        cmd += ["--repo", str(repo)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    server = app = ""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not app:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("nui up exited during start-up")
        if m := re.match(r"server on (\S+)", line):
            server = m.group(1)
        if m := re.match(r"app on (\S+)", line):
            app = m.group(1)
    return proc, server, app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=None, help="model repository (default: the bundled one)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ui_voice.json")
    args = p.parse_args(argv)

    from gradio_client import Client, handle_file

    from ui.client import NuiClient

    tmp = Path(tempfile.mkdtemp(prefix="nui_ui_bench_"))
    clips = []
    for i, (text, _) in enumerate(SENTENCES):
        path = tmp / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
        clips.append(path)
    picture = tmp / "picture.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).uniform(0, 255, (96, 96, 3))).astype(np.uint8)).save(picture)

    proc, server, url = start_stack(args.repo)
    times: dict[str, list[float]] = {"hear (end of speech -> reply text)": [], "speak (reply -> its audio)": [],
                                     "ask (typed -> reply text)": [], "grpc Recognize alone": []}
    replies: dict[str, str] = {}
    try:
        grpc_client = NuiClient(server)
        for _ in range(args.rounds):
            gc = Client(url, verbose=False)
            gc.predict(handle_file(str(picture)), [], api_name="/set_picture")
            chat: list = []
            for (text, _), clip in zip(SENTENCES, clips, strict=True):
                t0 = time.perf_counter()
                heard, chat = gc.predict(handle_file(str(clip)), chat, api_name="/hear")
                times["hear (end of speech -> reply text)"].append(time.perf_counter() - t0)
                last = chat[-1]["content"]
                replies[text] = f"heard {heard!r} -> " + (last if isinstance(last, str) else last[0]["text"])[:90]
                t0 = time.perf_counter()
                gc.predict(chat, api_name="/speak")
                times["speak (reply -> its audio)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            gc.predict("what can you do?", [], api_name="/ask")
            times["ask (typed -> reply text)"].append(time.perf_counter() - t0)
            for clip in clips:
                t0 = time.perf_counter()
                grpc_client.recognize(clip.read_bytes())
                times["grpc Recognize alone"].append(time.perf_counter() - t0)
        grpc_client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)

    rows = {k: {"n": len(v), "p50_ms": round(1000 * percentile(v, 50), 1), "p95_ms": round(1000 * percentile(v, 95), 1),
                "mean_ms": round(1000 * statistics.fmean(v), 1)} for k, v in times.items()}
    print(f"{'path':40s} {'n':>4s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s}")
    for k, r in rows.items():
        print(f"{k:40s} {r['n']:4d} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['mean_ms']:8.1f}")
    for text, reply in replies.items():
        print(f"  {text!r}: {reply}")
    result = {"rows": rows, "replies": replies, "sentences": SENTENCES, "rounds": args.rounds,
              "repo": str(args.repo or "model_repository"), "machine": {"cpus": os.cpu_count(),
                                                                         "platform": platform.platform()},
              "command": "python bench/ui_voice.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
