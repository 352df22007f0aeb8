"""Captioner benchmark: captions per second over gRPC at 1/8/32 concurrent clients, batching on vs off.

    python bench/captioner.py [--repo model_repository --model captioner] [--out bench/results/captioner.json]
    python bench/captioner.py --random-preset small --quick     # no trained model needed: random decoder

Model: the repository's captioner, or with --random-preset the preset exported with the ImageNet
encoder (when the preset uses it) and a seeded random decoder (same graphs and cost as a trained
model; its captions run to --max-length, as a random decoder rarely picks end-of-caption).

Images: scikit-image's bundled photos (astronaut, coffee, chelsea, rocket, ...) as JPEG at their own
sizes (300x451 to 872x1000), so every request pays JPEG decoding and resizing, as a real one does.

Server: `python -m nui serve` as a subprocess (bench/speech_ctc.py `ServerProcess`), batching on
(`--max-batch-size 16 --max-queue-delay-ms 5`: encoder batches of up to 16 images, decoder-step batches
of every request's beams) and off (`--max-batch-size 1`: one image per encoder run, one request's beams
per step run). A `grpc.aio` client in this process runs C workers (1, 8, 32) sending `Caption`
(beam --beam, default 3) back to back; captions/s counts requests completed in the `--duration-s`
window after `--warmup-s`, latency percentiles are over requests started in it. Any non-OK status
makes the exit status 1.

Prints the table, writes the JSON (numbers, machine, model, exact command) to `--out` and a PNG of
captions/s and p99 latency vs concurrency next to it. Each row also gives the server's CPU time per
caption in the window (from /proc): on a machine shared with other work, wall-clock captions/s depend
on what else runs, CPU ms per caption much less. Default run: about 2 minutes; `--quick`: about 1.
The client shares the CPUs with the server: on a small machine its cost is part of the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as speech_bench  # noqa: E402
from models.caption_image import IMAGE_SUFFIXES  # noqa: E402
from proto import caption_pb2, caption_pb2_grpc  # noqa: E402

logger = logging.getLogger("bench.captioner")

DEFAULT_OUT = ROOT / "bench" / "results" / "captioner.json"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry")


SERVER_CONFIGS = (speech_bench.ServerSetup("batching on", 16, 5.0), speech_bench.ServerSetup("batching off", 1, 5.0))


@dataclass(frozen=True)
class Row:
    config: str
    concurrency: int
    captions: int  # OK requests completed in the window
    window_s: float
    captions_per_s: float
    latency_samples: int  # OK requests started in the window
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_caption: float  # server CPU time in the window / captions completed in it
    mean_decoder_steps: float
    errors: dict[str, int]  # non-OK status name -> count, whole run (warm-up and drain included)
    total_requests: int


def make_images(max_images: int, image_dir: Path | None = None) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of scikit-image's bundled photos, RGB, quality 90; with `image_dir`, the bytes of
    its first `max_images` JPEG/PNG/WebP files by name (e.g. held-out caption scenes)."""
    if image_dir is not None:
        files = sorted(f for f in image_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no JPEG/PNG/WebP images in {image_dir}")
        return [(f.name, f.read_bytes()) for f in files[:max_images]]
    import skimage.data

    out = []
    for name in PHOTOS[:max_images]:
        pixels = getattr(skimage.data, name)()
        buf = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buf, format="JPEG", quality=90)
        out.append((name, buf.getvalue()))
    return out


def publish_random_model(preset: str, repo: Path, seed: int, vocab_size: int, image_size_px: int | None) -> None:
    """Export the preset (ImageNet encoder when it has one, seeded random decoder) to `<repo>/captioner/1`."""
    import dataclasses

    import torch

    from engines.export_captioner import export_captioner
    from models.caption_text import train_tokenizer
    from models.captioner import build, get_preset, load_pretrained_encoder

    words = [f"w{i}" for i in range(vocab_size - 4)]
    tokenizer = train_tokenizer([" ".join(words)])
    cfg = dataclasses.replace(get_preset(preset), vocab_size=tokenizer.vocab_size)
    if image_size_px is not None:
        cfg = dataclasses.replace(cfg, image_size_px=image_size_px)
    torch.manual_seed(seed)
    model = build(cfg)
    if cfg.encoder == "efficientnet_lite0":
        load_pretrained_encoder(model)
    export_captioner(model.eval(), tokenizer.to_str(), repo, "captioner", 1)


async def drive_load(address: str, requests: Sequence[caption_pb2.CaptionRequest], concurrency: int,
                     warmup_s: float, duration_s: float, timeout_s: float, bar: tqdm | None = None,
                     cpu_s: Callable[[], float] | None = None
                     ) -> tuple[list[tuple[float, float, str, int]], tuple[float, float], float]:
    """C workers send requests back to back for warmup_s + duration_s, then finish the ones in flight.
    Returns (start, end, status name, decoder steps) per request, the measured window, and the server CPU
    seconds used in it (`cpu_s` sampled at both ends; NaN without it)."""
    records: list[tuple[float, float, str, int]] = []
    window_cpu_s = float("nan")
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = caption_pb2_grpc.CaptionerStub(channel)
        start = time.perf_counter()
        window = (start + warmup_s, start + warmup_s + duration_s)

        async def worker(index: int) -> None:
            k = index  # workers start at different images
            while time.perf_counter() < window[1]:
                t0 = time.perf_counter()
                steps = 0
                try:
                    reply = await stub.Caption(requests[k % len(requests)], timeout=timeout_s)
                    code, steps = "OK", reply.timing.decoder_steps
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                records.append((t0, time.perf_counter(), code, steps))
                k += 1
                if bar is not None:
                    speech_bench._show_progress(bar, len(records), time.perf_counter() - start)

        async def sample_cpu() -> None:
            nonlocal window_cpu_s
            if cpu_s is None:
                return
            await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
            begin = cpu_s()
            await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
            window_cpu_s = cpu_s() - begin

        await asyncio.gather(sample_cpu(), *(worker(i) for i in range(concurrency)))
    return records, window, window_cpu_s


def summarize(config: str, concurrency: int, records: list[tuple[float, float, str, int]],
              window: tuple[float, float], window_cpu_s: float = float("nan")) -> Row:
    """Throughput: OK requests completed in the window; latency: OK requests started in it."""
    t0, t1 = window
    completed = [r for r in records if r[2] == "OK" and t0 <= r[1] < t1]
    started = [r for r in records if r[2] == "OK" and t0 <= r[0] < t1]
    latencies_ms = np.array([1e3 * (end - begin) for begin, end, _, _ in started])
    p50, p99 = np.percentile(latencies_ms, [50, 99]).tolist() if len(latencies_ms) else [float("nan")] * 2
    return Row(config=config, concurrency=concurrency, captions=len(completed), window_s=t1 - t0,
               captions_per_s=len(completed) / (t1 - t0), latency_samples=len(latencies_ms), p50_ms=float(p50),
               p99_ms=float(p99),
               server_cpu_ms_per_caption=1e3 * window_cpu_s / len(completed) if completed else float("nan"),
               mean_decoder_steps=float(np.mean([r[3] for r in completed])) if completed else 0.0,
               errors=dict(sorted(Counter(r[2] for r in records if r[2] != "OK").items())),
               total_requests=len(records))


def run(repo: Path, model: str, requests: Sequence[caption_pb2.CaptionRequest], args: argparse.Namespace,
        workdir: Path) -> tuple[list[Row], list[dict[str, Any]]]:
    rows: list[Row] = []
    servers = []
    for setup in SERVER_CONFIGS:
        log_path = workdir / f"server-{setup.max_batch_size}.log"
        server = speech_bench.ServerProcess(repo, setup, args.intra_op_threads, log_path)
        try:
            for concurrency in args.concurrency:
                total_s = args.warmup_s + args.duration_s
                with tqdm(total=round(total_s, 1), desc=f"{setup.name}, C={concurrency}", unit="s", leave=False,
                          disable=None, bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s{postfix}") as bar:
                    records, window, cpu_s = asyncio.run(drive_load(
                        server.address, requests, concurrency, args.warmup_s, args.duration_s,
                        args.request_timeout_s, bar, server.cpu_s))
                row = summarize(setup.name, concurrency, records, window, cpu_s)
                rows.append(row)
                logger.info("%s C=%d: %.2f captions/s, p99 %.0f ms, errors %s", row.config, concurrency,
                            row.captions_per_s, row.p99_ms, row.errors)
        finally:
            exit_code = server.stop()
        servers.append({**asdict(setup), "command": shlex.join(server.command), "exit_code": exit_code})
    return rows, servers


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'config':<14} {'C':>3} {'captions/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/cap':>10} "
             f"{'steps':>6} {'errors':>7}"]
    for r in rows:
        lines.append(f"{r.config:<14} {r.concurrency:>3} {r.captions_per_s:>10.2f} {r.p50_ms:>8.0f} "
                     f"{r.p99_ms:>8.0f} {r.server_cpu_ms_per_caption:>10.1f} {r.mean_decoder_steps:>6.1f} "
                     f"{sum(r.errors.values()):>7}")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(14, 4))
    for name in dict.fromkeys(r.config for r in rows):
        mine = [r for r in rows if r.config == name]
        ax_tp.plot([r.concurrency for r in mine], [r.captions_per_s for r in mine], marker="o", label=name)
        ax_lat.plot([r.concurrency for r in mine], [r.p99_ms for r in mine], marker="o", label=name)
        ax_cpu.plot([r.concurrency for r in mine], [r.server_cpu_ms_per_caption for r in mine], marker="o", label=name)
    concurrency = sorted({r.concurrency for r in rows})
    for ax, ylabel in ((ax_tp, "captions / s"), (ax_lat, "p99 latency (ms)"), (ax_cpu, "server CPU ms / caption")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_tp.set_ylim(bottom=0)
    ax_cpu.set_ylim(bottom=0)
    if any(r.p99_ms > 0 for r in rows):
        ax_lat.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/captioner.py",
                                description="Benchmark Caption over gRPC, batching on vs off.")
    p.add_argument("--repo", type=Path, default=None, help="model repository (default: the bundled one)")
    p.add_argument("--model", default="captioner")
    p.add_argument("--random-preset", default=None, metavar="PRESET",
                   help="benchmark this preset with a random decoder instead (e.g. small); no repository needed")
    p.add_argument("--vocab-size", type=int, default=1000, help="with --random-preset")
    p.add_argument("--image-size-px", type=int, default=None, help="with --random-preset: override the preset's")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; the PNG goes next to it")
    p.add_argument("--quick", action="store_true", help="4 s windows, 1 s warm-up")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per run (10; --quick 4)")
    p.add_argument("--warmup-s", type=float, default=None, help="warm-up seconds per run (2; --quick 1)")
    p.add_argument("--concurrency", type=speech_bench._int_list, default=(1, 8, 32))
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-length", type=int, default=12,
                   help="most tokens per caption, at most the model's limit (a typical caption: ~10 words + EOS)")
    p.add_argument("--images", type=int, default=len(PHOTOS),
                   help=f"how many of the {len(PHOTOS)} photos (or of --image-dir's images)")
    p.add_argument("--image-dir", type=Path, default=None,
                   help="send these images instead of the photos, e.g. data/captions/images/test (held-out scenes: "
                        "in domain, so every request runs the decoder; most photos are answered by the domain check)")
    p.add_argument("--request-timeout-s", type=float, default=120.0)
    p.add_argument("--intra-op-threads", type=int, default=2, help="ONNX Runtime threads per engine run")
    p.add_argument("--seed", type=int, default=0)
    return p


@contextlib.contextmanager
def model_repo(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    if args.random_preset is not None:
        with tempfile.TemporaryDirectory(prefix="nui-bench-repo-") as tmp:
            logger.info("exporting the %r preset with a random decoder", args.random_preset)
            publish_random_model(args.random_preset, Path(tmp), args.seed, args.vocab_size, args.image_size_px)
            yield Path(tmp), f"random-preset:{args.random_preset}"
        return
    repo = args.repo if args.repo is not None else ROOT / "model_repository"
    if not (repo / args.model).is_dir():
        raise ValueError(f"{repo / args.model} does not exist; export one (nui export captioner ...) or "
                         "benchmark random weights with --random-preset small")
    yield repo, "repository"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.duration_s = args.duration_s if args.duration_s is not None else (4.0 if args.quick else 10.0)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 2.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    machine = speech_bench.machine_info()
    try:
        images = make_images(args.images, args.image_dir)
        with model_repo(args) as (repo, source), tempfile.TemporaryDirectory(prefix="nui-bench-") as workdir:
            from engines.manifest import read_manifest, version_dir

            manifest = read_manifest(version_dir(repo, args.model))
            args.max_length = min(args.max_length, int(manifest.config["max_len"]) - 1)
            config = caption_pb2.CaptionConfig(model=args.model, beam_size=args.beam, max_length=args.max_length)
            requests = [caption_pb2.CaptionRequest(config=config, image=data) for _, data in images]
            rows, servers = run(repo, args.model, requests, args, Path(workdir))
    except (ValueError, OSError, RuntimeError) as e:
        print(f"bench/captioner.py: error: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    report = {
        "benchmark": "captioner", "command": shlex.join(["python", "bench/captioner.py", *argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "elapsed_s": time.perf_counter() - started,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "model": {"source": source, "repo": str(repo), "name": manifest.model, "precision": manifest.precision,
                  "config": manifest.config, "size_bytes": manifest.extras.get("size_bytes"),
                  "source_checkpoint_sha256": manifest.source_checkpoint_sha256},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                     if k not in ("out", "repo")},
        "images": [{"name": n, "jpeg_bytes": len(d)} for n, d in images],
        "server_configs": servers, "rows": [asdict(r) for r in rows],
    }
    png = args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, png, f"{manifest.model} ({source}), beam {args.beam}, {machine['cpus_usable']} CPUs")
    report["plot"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
    speech_bench.write_json(args.out, report)
    print(f"\nwrote {args.out} and {png}")
    errors = sum(sum(r.errors.values()) for r in rows)
    if errors:
        print(f"bench/captioner.py: {errors} requests failed (see 'errors' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
