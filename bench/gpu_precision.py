"""FP16 vs FP32 of the `torch` engines on one CUDA GPU: task-metric deltas and speed (issue 7).

    # here, where the full install reads the data: publish torch versions, stage the inputs as arrays
    nui export speech --checkpoint runs/speech_small_ft4 --repo .gpu/repo --version 1 \
        --dev-manifest data/speech/dev.jsonl --lm-dir data/speech/lm --engine torch --precision fp16
    nui export captioner --checkpoint runs/captioner_small --repo .gpu/repo --version 1 \
        --dev-images data/captions/images/val --domain-data data/captions --engine torch --precision fp16
    python bench/gpu_precision.py stage --speech-manifest data/speech/dev.jsonl --speech-limit 100 \
        --caption-images data/captions/images/test --caption-limit 200 --out .gpu/data
    # on the GPU machine (bench/gpu_check.sh), whose image has no soundfile, soxr or jiwer (carried wheel)
    python bench/gpu_precision.py run --repo .gpu/repo --data .gpu/data --out $OUT/gpu_precision.json

For each model in `--repo` published with engine "torch" (speech_ctc, captioner, diagnosis) and staged
data, the same gates that `nui export --precision fp16` applies on ONNX Runtime (engines/fp16_parity.py)
compare two runs of the one version through `TorchEngine`:

- `fp16 vs fp32 (cuda)`: FP16 autocast (FP32 islands, FP32 master weights) against FP32, both on the GPU;
- `cuda fp32 vs cpu fp32`: the GPU's FP32 (TF32 off) against the CPU engine the tests check.

Speed: the task's inputs through each engine in batches of `--batch`, a warm-up pass, then the median of
`--repeats` timed passes (each run copies its outputs to the host, which synchronizes). Prints a table and
writes `--out` JSON with the device, versions and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# the repository root, in place of bench/ (whose triton/ folder would shadow the triton package)
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

SPEECH, CAPTIONS, DIAGNOSIS = "speech.npz", "captions.npz", "diagnosis.npz"


def stage(args: argparse.Namespace) -> int:
    """Inputs as plain arrays: speech clips (int16 PCM, lengths, texts), caption pixels (uint8), patients."""
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speech_manifest:
        from training.speech_ctc.manifest import load_audio, read_manifest

        utts = read_manifest(args.speech_manifest)[: args.speech_limit]
        clips = [load_audio(u.audio_filepath) for u in utts]
        pcm = np.concatenate([np.round(np.clip(c, -1, 1) * 32767).astype(np.int16) for c in clips])
        np.savez_compressed(args.out / SPEECH, pcm=pcm, lengths=np.array([len(c) for c in clips]),
                            texts=np.array([u.text for u in utts]))
    if args.caption_images:
        from nui.export_captioner import image_files, load_images

        pixels = load_images(image_files([args.caption_images], args.caption_limit), args.image_size_px)
        np.savez_compressed(args.out / CAPTIONS, pixels=np.round(pixels * 255).astype(np.uint8))
    if args.diagnosis_data:
        from nui.export_diagnosis import patient_inputs
        from training.diagnosis.patients import Patients

        dev = Patients.load(args.diagnosis_data / "patients_dev.npz")
        n_symptoms = int(json.loads((args.diagnosis_data / "summary.json").read_text())["symptoms"])
        evidence, age, sex = patient_inputs(dev, np.arange(min(args.diagnosis_limit, len(dev))), n_symptoms)
        np.savez_compressed(args.out / DIAGNOSIS, evidence=evidence, age_years=age, sex=sex)
    for f in sorted(args.out.iterdir()):
        print(f"{f}: {f.stat().st_size / 1e6:.1f} MB")
    return 0


Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _timed(run: Run, feeds: Sequence[dict[str, np.ndarray]], repeats: int) -> float:
    """Median seconds of one pass over `feeds`, after a warm-up pass."""
    for f in feeds:
        run(f)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for f in feeds:
            run(f)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _speech(folder: Path, data: Path, device: str, batch: int, repeats: int) -> dict[str, Any]:
    from engines.fp16_parity import compare_speech
    from engines.torch_engine import TorchEngine
    from models.speech_batch import pad_batch

    z = np.load(data / SPEECH)
    bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
    clips = [z["pcm"][a:b].astype(np.float32) / 32767 for a, b in itertools.pairwise(bounds)]
    texts = [str(t) for t in z["texts"]]
    engines = {p: TorchEngine(folder, device=device, precision=p) for p in ("fp32", "fp16")}
    cpu = TorchEngine(folder, device="cpu", precision="fp32")
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    feeds = []
    for k in range(0, len(order), batch):
        audio, lengths = pad_batch([clips[i] for i in order[k:k + batch]])
        feeds.append({"audio": audio, "audio_lengths": lengths})
    audio_s = sum(len(c) for c in clips) / 16000
    speed = {p: audio_s / _timed(e.run, feeds, repeats) for p, e in engines.items()}
    return {"items": len(clips), "audio_s": audio_s, "unit": "audio s/s",
            "fp16_vs_fp32": compare_speech(engines["fp32"].run, engines["fp16"].run, clips, texts),
            "cuda_vs_cpu_fp32": compare_speech(cpu.run, engines["fp32"].run, clips, texts),
            "speed": speed}


def _captioner(folder: Path, data: Path, device: str, batch: int, repeats: int) -> dict[str, Any]:
    from engines.fp16_parity import compare_captioner, decoder_step
    from engines.torch_engine import TorchEngine
    from models.caption_beam import greedy_search
    from models.caption_text import BOS, EOS, PAD, UNK

    images = np.load(data / CAPTIONS)["pixels"].astype(np.float32) / 255
    pairs = {p: (TorchEngine(folder, graph="encoder", device=device, precision=p),
                 TorchEngine(folder, graph="decoder_step", device=device, precision=p)) for p in ("fp32", "fp16")}
    cpu = (TorchEngine(folder, graph="encoder", device="cpu", precision="fp32"),
           TorchEngine(folder, graph="decoder_step", device="cpu", precision="fp32"))
    max_len = int(cpu[0].manifest.config["max_len"])

    def runs(pair: tuple[Any, Any]) -> tuple[Run, Run]:
        return pair[0].run, pair[1].run

    def caption_batch(pair: tuple[Any, Any]) -> Run:
        enc, dec = pair

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = enc.run(feed)
            state = {k: out[k] for k in ("memory", "keys", "state")}
            greedy_search(decoder_step(dec.run), state, len(feed["images"]), BOS, EOS, max_len - 1, (PAD, BOS, UNK))
            return out
        return run

    feeds = [{"images": images[k:k + batch]} for k in range(0, len(images), batch)]
    speed = {p: len(images) / _timed(caption_batch(pair), feeds, repeats) for p, pair in pairs.items()}
    return {"items": len(images), "unit": "captions/s (greedy)",
            "fp16_vs_fp32": compare_captioner(runs(pairs["fp32"]), runs(pairs["fp16"]), images, max_len),
            "cuda_vs_cpu_fp32": compare_captioner(runs(cpu), runs(pairs["fp32"]), images, max_len),
            "speed": speed, "cuda_graphs": pairs["fp16"][1].captures_graphs}


def _diagnosis(folder: Path, data: Path, device: str, batch: int, repeats: int) -> dict[str, Any]:
    from engines.fp16_parity import compare_diagnosis
    from engines.torch_engine import TorchEngine

    z = np.load(data / DIAGNOSIS)
    evidence, age, sex = z["evidence"], z["age_years"], z["sex"]
    engines = {p: TorchEngine(folder, device=device, precision=p) for p in ("fp32", "fp16")}
    cpu = TorchEngine(folder, device="cpu", precision="fp32")
    feeds = [{"evidence": evidence[k:k + batch], "age_years": age[k:k + batch], "sex": sex[k:k + batch]}
             for k in range(0, len(evidence), batch)]
    speed = {p: len(evidence) / _timed(e.run, feeds, repeats) for p, e in engines.items()}
    return {"items": len(evidence), "unit": "patients/s",
            "fp16_vs_fp32": compare_diagnosis(engines["fp32"].run, engines["fp16"].run, evidence, age, sex),
            "cuda_vs_cpu_fp32": compare_diagnosis(cpu.run, engines["fp32"].run, evidence, age, sex),
            "speed": speed}


TASKS = {"speech_ctc": (SPEECH, _speech), "captioner": (CAPTIONS, _captioner), "diagnosis": (DIAGNOSIS, _diagnosis)}
# the figures each gate reports, in table order
FIGURES = ("greedy_wer_fp32", "greedy_wer_fp16", "transcript_agreement", "max_prob_diff", "caption_agreement",
           "max_feature_rel_err", "top5_agreement", "top1_agreement", "passed")


def run(args: argparse.Namespace) -> int:
    import torch

    from engines.manifest import read_manifest, version_dir

    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32: the reference for the FP16 deltas
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    results: dict[str, Any] = {}
    for model, (data_file, measure) in TASKS.items():
        if not (args.repo / model).is_dir() or not (args.data / data_file).is_file():
            results[model] = {"skipped": f"no {args.repo / model} or no {args.data / data_file}"}
            continue
        folder = version_dir(args.repo, model, None)
        if read_manifest(folder, verify=False).engine != "torch":
            results[model] = {"skipped": f"{folder} is not a torch engine"}
            continue
        results[model] = {"version_dir": str(folder), **measure(folder, args.data, args.device, args.batch,
                                                                 args.repeats)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"torch engines on {name}, batch {args.batch}; TF32 off")
    for model, r in results.items():
        if "skipped" in r:
            print(f"{model:<11}skipped: {r['skipped']}")
            continue
        for comparison in ("fp16_vs_fp32", "cuda_vs_cpu_fp32"):
            figs = [f"{f}={r[comparison][f]:.4g}" if isinstance(r[comparison][f], float) else f"{f}={r[comparison][f]}"
                    for f in FIGURES if f in r[comparison]]
            print(f"{model:<11}{comparison:<22}" + "  ".join(figs))
        print(f"{model:<11}{'speed':<22}" + "  ".join(f"{p} {v:.1f} {r['unit']}" for p, v in r["speed"].items())
              + f"  (fp16/fp32 {r['speed']['fp16'] / r['speed']['fp32']:.2f}x)")
    out = {"command": shlex.join([sys.executable, *sys.argv]), "date": dt.datetime.now(dt.UTC).isoformat(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "device_name": name, "tf32": False,
           "batch": args.batch, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="write the inputs as arrays (needs the full install)")
    s.add_argument("--speech-manifest", type=Path)
    s.add_argument("--speech-limit", type=int, default=100)
    s.add_argument("--caption-images", type=Path, help="folder of images (held-out split)")
    s.add_argument("--caption-limit", type=int, default=200)
    s.add_argument("--image-size-px", type=int, default=128, help="the captioner manifest's image_size_px")
    s.add_argument("--diagnosis-data", type=Path, help="data folder with patients_dev.npz")
    s.add_argument("--diagnosis-limit", type=int, default=2000)
    s.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="compare FP16 and FP32 on the GPU")
    r.add_argument("--repo", type=Path, required=True, help="repository of torch-engine versions")
    r.add_argument("--data", type=Path, required=True, help="the folder `stage` wrote")
    r.add_argument("--device", default="cuda")
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--out", type=Path, default=Path("bench/results/gpu/gpu_precision.json"))
    args = p.parse_args(argv)
    return stage(args) if args.command == "stage" else run(args)


if __name__ == "__main__":
    raise SystemExit(main())
