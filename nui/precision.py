"""`nui precision`: FP16 range report of a published FP32 engine (weights, activations on dev data) plus
the metric deltas of its FP16 conversion. Glue between training/ (dev data readers) and engines/.

    nui precision --repo model_repository --model speech_ctc --version 1 --data data/speech/dev.jsonl \
        --limit 100 --out docs/speech_ctc/precision
    nui precision --repo model_repository --model diagnosis --data data/diagnosis --limit 500 \
        --out docs/diagnosis/precision

Writes `<out>/precision.json` (shares of weights and activations below FP16's smallest subnormal, in its
subnormal range, above its max; the log2 histograms; the FP16 engine's gate figures against the FP32 one:
greedy WER / top-5 agreement / caption agreement) and `<out>/histogram.png` (engines/precision.py).
For the captioner, activations are measured on the encoder graph.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engines.engine import graph_specs
from engines.fp16 import PLANS, SOURCE_PRECISIONS, Fp16Plan, fp32_staging, island_summary, publish_fp16
from engines.fp16_parity import Check, captioner_check, diagnosis_check, speech_check
from engines.manifest import read_manifest, version_dir
from engines.precision import (
    FP16_MAX,
    FP16_MIN_NORMAL,
    FP16_MIN_SUBNORMAL,
    activation_counts,
    plot_histograms,
    weight_counts,
)

logger = logging.getLogger(__name__)


def _batches(feeds: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch):
        yield {k: v[start:start + batch] for k, v in feeds.items()}


def task_data(task: str, data: Path, limit: int, cfg: dict[str, Any]) -> tuple[list[dict[str, np.ndarray]], Check]:
    """(activation feeds in batches, FP16 gate) from the task's dev data."""
    if task == "speech_ctc":
        from training.speech_ctc.manifest import load_audio
        from training.speech_ctc.manifest import read_manifest as read_speech

        utts = read_speech(data)[:limit]
        clips = [load_audio(u.audio_filepath) for u in utts]
        feeds: list[dict[str, np.ndarray]] = []
        for k in range(0, len(clips), 8):
            group = clips[k:k + 8]
            lengths = np.array([len(c) for c in group], dtype=np.int64)
            audio = np.zeros((len(group), int(lengths.max())), dtype=np.float32)
            for i, c in enumerate(group):
                audio[i, : len(c)] = c
            feeds.append({"audio": audio, "audio_lengths": lengths})
        return feeds, speech_check(clips, [u.text for u in utts])
    if task == "diagnosis":
        from nui.export_diagnosis import patient_inputs
        from training.diagnosis.patients import Patients

        dev = Patients.load(data / "patients_dev.npz")
        evidence, age, sex = patient_inputs(dev, np.arange(min(limit, len(dev))), int(cfg["n_symptoms"]))
        return list(_batches({"evidence": evidence, "age_years": age, "sex": sex}, 64)), \
            diagnosis_check(evidence, age, sex)
    if task == "captioner":
        from nui.export_captioner import image_files, load_images

        images = load_images(image_files([data], limit), int(cfg["image_size_px"]))
        return list(_batches({"images": images}, 8)), captioner_check(images)
    raise ValueError(f"nui precision supports speech_ctc, diagnosis and captioner models, not task {task!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui precision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--model", required=True, help="model name in the repository, e.g. speech_ctc")
    p.add_argument("--version", type=int, default=None, help="default: the highest")
    p.add_argument("--data", type=Path, required=True,
                   help="dev data: speech manifest (.jsonl), diagnosis data folder, or caption images folder")
    p.add_argument("--limit", type=int, default=100, help="dev items measured")
    p.add_argument("--out", type=Path, required=True, help="folder for precision.json and histogram.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = version_dir(args.repo, args.model, args.version)
        manifest = read_manifest(folder)
        plan = PLANS.get(manifest.task, Fp16Plan())
        feeds, (gate, example_feeds) = task_data(manifest.task, args.data, args.limit, manifest.config)
        graph = "encoder" if "graphs" in manifest.extras else None
        onnx_file = graph_specs(manifest, graph)[0]
        import onnx

        weights = weight_counts(onnx.load(str(folder / onnx_file)))
        acts = activation_counts(folder / onnx_file, feeds, plan, n_batches=len(feeds))
        deltas: dict[str, Any] = {}
        if manifest.precision in SOURCE_PRECISIONS:
            measured: dict[str, Any] = {}

            def measure(fp32_dir: Path, fp16_dir: Path) -> dict[str, Any]:
                measured.update(gate(fp32_dir, fp16_dir))  # a report measures, it does not gate
                return {"passed": True}

            with fp32_staging() as tmp:
                _, fp16 = publish_fp16(folder, tmp, args.model, None, measure, example_feeds, plan)
                deltas = {"fp16_vs_fp32": measured, "fp16": fp16.extras["fp16"], "islands": island_summary(fp16)}
        else:
            deltas = {"skipped": f"version precision is {manifest.precision!r}; FP16 deltas need one of "
                                 f"{SOURCE_PRECISIONS}"}
    except (OSError, ValueError) as e:
        print(f"nui precision: {e}", file=sys.stderr)
        return 1
    populations = {"weights": weights, "activations computed in FP16": acts["fp16"],
                   "activations in FP32 islands": acts["fp32_islands"]}
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.model} v{folder.name} ({onnx_file}): |value| vs FP16 range, {args.limit} dev items max"
    plot_histograms(populations, args.out / "histogram.png", title)
    report = {"model": args.model, "version": int(folder.name), "graph": onnx_file, "task": manifest.task,
              "dev_items": args.limit, "data": str(args.data),
              "fp16_limits": {"min_subnormal": FP16_MIN_SUBNORMAL, "min_normal": FP16_MIN_NORMAL, "max": FP16_MAX},
              "plan": plan.to_dict(), **{k.replace(" ", "_"): v.to_dict() for k, v in populations.items()},
              "metric_deltas": deltas}
    (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, c in populations.items():
        d = c.to_dict()
        print(f"{name:32s} {c.total:>12,} values  below subnormal {d['share_below_fp16_subnormal']:.3%}  "
              f"subnormal {d['share_fp16_subnormal']:.3%}  overflow {d['share_above_fp16_max']:.3%}")
    print(f"FP16 vs FP32: {deltas.get('fp16_vs_fp32', deltas)}")
    print(f"wrote {args.out / 'precision.json'} and {args.out / 'histogram.png'}")
    return 0
