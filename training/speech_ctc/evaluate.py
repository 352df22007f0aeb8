"""Word error rate of a speech checkpoint on a manifest: greedy, beam + n-gram LM, and pocketsphinx 5.1.1
on the same clips, in one run, as a table and JSON.

    nui eval speech --checkpoint runs/speech_small --manifest data/speech/test.jsonl \
        --lm-dir data/speech/lm --tune-manifest data/speech/dev.jsonl --out docs/speech_eval.json

--tune-manifest picks the LM weight (alpha) and word bonus (beta) on *dev* voices; the test manifest's
voices are then decoded with those fixed values, so the reported figure never saw its own clips.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from tqdm import tqdm

from models.ctc_beam import BeamOptions, CTCBeamDecoder
from models.ctc_text import greedy_decode, normalize_text
from models.speech_ctc import SpeechCTC
from training.speech_ctc.manifest import Utterance, load_audio, read_manifest, seeded_sample
from training.speech_ctc.model_io import load_model

logger = logging.getLogger(__name__)


@torch.no_grad()
def log_probs_of(model: SpeechCTC, utts: list[Utterance], batch_size: int = 16) -> tuple[list[np.ndarray], float]:
    """Per-utterance valid-frame log-probs (FP32), and the seconds the acoustic model took."""
    out: list[np.ndarray] = [np.empty(0)] * len(utts)
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration_s)
    seconds = 0.0
    for k in tqdm(range(0, len(order), batch_size), desc="acoustic model", leave=False):
        idx = order[k:k + batch_size]
        clips = [load_audio(utts[i].audio_filepath) for i in idx]
        lengths = torch.tensor([len(c) for c in clips])
        audio = torch.zeros(len(clips), int(lengths.max()))
        for j, c in enumerate(clips):
            audio[j, : len(c)] = torch.from_numpy(c)
        t0 = time.perf_counter()
        lp, n = model(audio, lengths)
        seconds += time.perf_counter() - t0
        for j, i in enumerate(idx):
            out[i] = lp[j, : int(n[j])].numpy()
    return out, seconds


def group_indices(utts: list[Utterance]) -> dict[str, list[int]]:
    """Clip indices by voice engine ("voice:espeak", from the speaker id) and by sentence source
    ("text:grammar", from the sentence id); groups with no clips are left out."""
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        for key in (f"voice:{u.speaker.split('-')[0]}" if u.speaker else "",
                    f"text:{u.sentence_id.split('-')[0]}" if u.sentence_id else ""):
            if key:
                groups.setdefault(key, []).append(i)
    return dict(sorted(groups.items()))


def wer_cer(refs: list[str], hyps: list[str]) -> dict[str, float]:
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def beam_hyps(decoder: CTCBeamDecoder, lps: list[np.ndarray], frame_s: float) -> list[str]:
    return [decoder.decode(lp, frame_s).transcript for lp in tqdm(lps, desc="beam+LM", leave=False)]


def tune_lm(lm_dir: Path, lps: list[np.ndarray], refs: list[str], frame_s: float,
            alphas: list[float], betas: list[float], beam_width: int) -> tuple[BeamOptions, list[dict[str, Any]]]:
    """Grid-search alpha (LM weight) and beta (word bonus) for the lowest WER on these (dev) clips."""
    unigrams = (lm_dir / "unigrams.txt").read_text().split()
    grid = []
    best: tuple[float, BeamOptions] | None = None
    for alpha, beta in itertools.product(alphas, betas):
        opts = BeamOptions(beam_width=beam_width, alpha=alpha, beta=beta)
        dec = CTCBeamDecoder(lm_dir / "lm.arpa", unigrams, opts)
        w = float(jiwer.wer(refs, beam_hyps(dec, lps, frame_s)))
        grid.append({"alpha": alpha, "beta": beta, "wer": w})
        logger.info("alpha %.2f beta %.2f: dev WER %.2f%%", alpha, beta, 100 * w)
        if best is None or w < best[0]:
            best = (w, opts)
    assert best is not None
    return best[1], grid


def pocketsphinx_hyps(utts: list[Utterance]) -> tuple[list[str], float]:
    """Transcripts from pocketsphinx 5.1.1's bundled US English model (the baseline to beat)."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="FATAL")
    hyps, seconds = [], 0.0
    for u in tqdm(utts, desc="pocketsphinx", leave=False):
        pcm = (np.clip(load_audio(u.audio_filepath), -1, 1) * 32767).astype("<i2").tobytes()
        t0 = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        seconds += time.perf_counter() - t0
        hyp = decoder.hyp()
        hyps.append(normalize_text(hyp.hypstr) if hyp is not None else "")
    return hyps, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval speech", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True, help="evaluation clips (held-out voices)")
    p.add_argument("--sample", type=int, default=0,
                   help="a seeded random sample of N clips (0 = all), e.g. to keep pocketsphinx's run short")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-dir", type=Path, help="lm.arpa + unigrams.txt from `nui data lm`")
    p.add_argument("--tune-manifest", type=Path, help="dev clips to tune alpha/beta on (not the test clips)")
    p.add_argument("--tune-limit", type=int, default=300,
                   help="tune on a seeded random sample of N dev clips (all voices of the manifest, 0 = all)")
    p.add_argument("--alphas", default="0.3,0.5,0.7,0.9")
    p.add_argument("--betas", default="0.0,1.0,2.0")
    p.add_argument("--beam-width", type=int, default=32)
    p.add_argument("--no-pocketsphinx", action="store_true")
    p.add_argument("--out", type=Path, help="write results JSON here (and the chosen decoder options)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model, _ = load_model(args.checkpoint)
    frame_s = model.cfg.frame_s
    utts = seeded_sample(read_manifest(args.manifest), args.sample, args.seed)
    refs = [normalize_text(u.text) for u in utts]
    audio_s = sum(u.duration_s for u in utts)
    lps, am_seconds = log_probs_of(model, utts)
    results: dict[str, Any] = {"command": "nui eval speech " + " ".join(sys.argv[2:] if argv is None else argv),
                               "manifest": str(args.manifest), "clips": len(utts), "audio_hours": audio_s / 3600,
                               "voices": sorted({u.speaker for u in utts}), "checkpoint": str(args.checkpoint)}
    systems: list[tuple[str, list[str], float]] = [
        ("nui greedy", [greedy_decode(lp) for lp in lps], audio_s / am_seconds)]
    if args.lm_dir:
        opts = BeamOptions(beam_width=args.beam_width)
        if args.tune_manifest:
            dev = seeded_sample(read_manifest(args.tune_manifest), args.tune_limit, args.seed)
            dev_lps, _ = log_probs_of(model, dev)
            opts, grid = tune_lm(args.lm_dir, dev_lps, [normalize_text(u.text) for u in dev], frame_s,
                                 [float(a) for a in args.alphas.split(",")],
                                 [float(b) for b in args.betas.split(",")], args.beam_width)
            results["tuning"] = {"manifest": str(args.tune_manifest), "clips": len(dev), "grid": grid}
        decoder = CTCBeamDecoder(args.lm_dir / "lm.arpa", (args.lm_dir / "unigrams.txt").read_text().split(), opts)
        t0 = time.perf_counter()
        hyps = beam_hyps(decoder, lps, frame_s)
        systems.append(("nui beam + 3-gram LM", hyps, audio_s / (am_seconds + time.perf_counter() - t0)))
        results["decoder"] = asdict(opts)
    if not args.no_pocketsphinx:
        ps_hyps, ps_seconds = pocketsphinx_hyps(utts)
        systems.append(("pocketsphinx 5.1.1", ps_hyps, audio_s / ps_seconds))
    groups = group_indices(utts)
    results["rows"] = [{"system": name, **wer_cer(refs, hyps), "x_real_time": rt,
                        "by_group": {g: wer_cer([refs[i] for i in idx], [hyps[i] for i in idx])["wer"]
                                     for g, idx in groups.items()}}
                       for name, hyps, rt in systems]
    results["group_clips"] = {g: len(idx) for g, idx in groups.items()}
    print(f"\n{len(utts)} clips, {audio_s / 60:.1f} min, {len(results['voices'])} voices")
    print(f"{'system':<24} {'WER %':>7} {'CER %':>7} {'x real time':>12}")
    for row in results["rows"]:
        print(f"{row['system']:<24} {100 * row['wer']:7.2f} {100 * row['cer']:7.2f} {row['x_real_time']:12.1f}")
    print("\nWER % by synthesizer of the (held-out) voice and by sentence source:")
    print(f"{'group':<22} {'clips':>6} " + " ".join(f"{r['system'][:20]:>21}" for r in results["rows"]))
    for g, idx in groups.items():
        print(f"{g:<22} {len(idx):6d} " + " ".join(f"{100 * r['by_group'][g]:21.2f}" for r in results["rows"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0
