"""bench/captioner.py: its window accounting and images (the full run is `python bench/captioner.py`)."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    if not (ROOT / "proto" / "caption_pb2_grpc.py").exists():  # git-ignored build outputs
        subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)
    spec = importlib.util.spec_from_file_location("bench_captioner", ROOT / "bench" / "captioner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_summarize_counts_completions_in_the_window_and_latency_of_requests_started_in_it() -> None:
    bench = load_bench()
    records = [
        (9.0, 10.5, "OK", 12),  # warm-up request finishing in the window: throughput, not latency
        (11.0, 11.1, "OK", 10),
        (12.0, 12.3, "OK", 8),
        (19.5, 21.0, "OK", 12),  # started in the window, finished after: latency, not throughput
        (13.0, 13.0, "RESOURCE_EXHAUSTED", 0),
    ]
    row = bench.summarize("batching on", 4, records, (10.0, 20.0), 0.6)
    assert row.captions == 3 and row.captions_per_s == pytest.approx(0.3)
    assert row.latency_samples == 3 and row.p50_ms == pytest.approx(300.0)
    assert row.mean_decoder_steps == pytest.approx(10.0) and row.server_cpu_ms_per_caption == pytest.approx(200.0)
    assert row.errors == {"RESOURCE_EXHAUSTED": 1} and row.total_requests == 5
    assert "batching on" in bench.format_table([row])


def test_images_are_real_jpeg_photos() -> None:
    pytest.importorskip("skimage")
    images = load_bench().make_images(3)
    assert [name for name, _ in images] == ["astronaut", "coffee", "chelsea"]
    for _, data in images:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) >= 300


def test_images_from_a_folder_are_its_image_files_as_they_are(tmp_path: Path) -> None:
    bench = load_bench()
    for name, fmt in (("b.png", "PNG"), ("a.jpg", "JPEG"), ("c.webp", "WEBP")):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    images = bench.make_images(2, tmp_path)
    assert [name for name, _ in images] == ["a.jpg", "b.png"]
    assert images[0][1] == (tmp_path / "a.jpg").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no JPEG/PNG/WebP images"):
        bench.make_images(2, empty)
