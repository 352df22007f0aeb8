"""Build the synthetic speech corpus for the speech CTC model: sentences x voices -> wavs + manifests.

    nui data speech --out data/speech [--sentences 20000] [--train-clips 20000] [--dev-clips 1000]
        [--test-clips 1000] [--augment-copies 1] [--workers N] [--seed 0]
        [--voices PATTERN ...] [--dev-voices PATTERN ...] [--test-voices PATTERN ...]
    nui data speech --list-voices

Owns the corpus plan and its two hold-outs:

* by voice: ``--test-voices`` / ``--dev-voices`` are glob patterns over voice ids
  (``nui data speech --list-voices``); a voice matching a test pattern is test only, else one
  matching a dev pattern is dev only, else train. The defaults (:data:`DEFAULT_TEST_VOICES`,
  :data:`DEFAULT_DEV_VOICES`) hold out a whole espeak accent, six espeak variants across all
  accents, one flite and one festival speaker for test, and the same kinds of voices for dev;
* by sentence: dev and test sentences never appear in train (nor in each other), and
  ``lm_text.txt``, the text for the word n-gram LM, holds the train sentences only.

Clips of a split are shared among engines by ``--engine-weights`` and evenly among each engine's
voices; each voice reads distinct sentences. Train clips get ``--augment-copies`` augmented copies
(speed, pitch, reverb, telephone band, noise, gain); dev and test clips are clean.

Output under OUT: ``wavs/<split>/<voice id>/<sentence id>[-aug<k>].wav`` (16 kHz mono 16-bit),
``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (NeMo manifests, paths relative to OUT),
``lm_text.txt`` (train sentences), ``dev_text.txt`` (dev sentences, for LM perplexity), and
``corpus.json`` (counts, hours, voices per split, failures, seed, the command). A clip whose
synthesis fails is skipped, counted and reported; it does not stop the build. Every clip is
determined by the seed, its voice and its sentence, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from training.speech_ctc.manifest import Utterance, write_manifest
from training.speech_ctc.synth import (
    SAMPLE_RATE_HZ,
    SynthesisError,
    Voice,
    all_voices,
    augment,
    check_voice,
    normalize_peak,
    random_prosody,
    synthesize_many,
    trim_silence,
    write_wav,
)
from training.speech_ctc.text import Prompt, build_prompts, hold_out

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
# Test: the Caribbean accent in every variant; six variants (two male, a female, a klatt, two named)
# in every accent; flite awb (Scottish male, CMU ARCTIC) and festival ked (American male diphone),
# speakers no train voice is built from. Dev: the same recipe with other accents/variants and flite rms.
DEFAULT_TEST_VOICES = (
    "espeak-en-029", "espeak-en-029+*",
    "espeak-*+m6", "espeak-*+f4", "espeak-*+klatt3", "espeak-*+Annie", "espeak-*+grandpa", "espeak-*+Mike",
    "flite-awb", "festival-ked_diphone",
)
DEFAULT_DEV_VOICES = (
    "espeak-en-gb-x-gbcwmd", "espeak-en-gb-x-gbcwmd+*",
    "espeak-*+m3", "espeak-*+f2", "espeak-*+klatt2", "espeak-*+belinda", "espeak-*+norbert",
    "flite-rms",
)
DEFAULT_ENGINE_WEIGHTS = "espeak=0.6,flite=0.25,festival=0.15"
FESTIVAL_BATCH = 8  # sentences per festival process: its start-up costs more than a sentence


@dataclass(frozen=True)
class CorpusConfig:
    out_dir: Path
    sentences: int = 20000  # distinct sentences generated, before the sentence hold-out
    dev_fraction: float = 0.05  # of the sentences, for dev only
    test_fraction: float = 0.05  # of the sentences, for test only
    train_clips: int = 20000  # clean clips; augmented copies come on top
    dev_clips: int = 1000
    test_clips: int = 1000
    augment_copies: int = 1  # augmented copies per train clip
    voices: tuple[str, ...] = ("*",)  # patterns: the voices to use at all
    dev_voices: tuple[str, ...] = DEFAULT_DEV_VOICES
    test_voices: tuple[str, ...] = DEFAULT_TEST_VOICES
    engine_weights: tuple[tuple[str, float], ...] = (("espeak", 0.6), ("flite", 0.25), ("festival", 0.15))
    workers: int = 1
    seed: int = 0
    timeout_s: float = 60.0  # per synthesizer call
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("sentences", "train_clips", "dev_clips", "test_clips", "augment_copies"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if any(w < 0 for _, w in self.engine_weights):
            raise ValueError(f"engine weights must be >= 0, got {dict(self.engine_weights)}")


@dataclass(frozen=True)
class ClipJob:
    split: str
    voice: Voice
    prompt: Prompt
    seed: int
    augment_copies: int
    out_dir: Path
    timeout_s: float


@dataclass(frozen=True)
class ClipResult:
    utterances: tuple[Utterance, ...]
    error: str = ""  # non-empty when the clip was skipped


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any values, the same in every process and Python version."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _matches(voice_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(voice_id, p) for p in patterns)


def split_voices(
    voices: Sequence[Voice], dev_patterns: Sequence[str], test_patterns: Sequence[str]
) -> dict[str, list[Voice]]:
    """Voices per split: test patterns win over dev patterns; the rest is train. Order is kept."""
    splits: dict[str, list[Voice]] = {s: [] for s in SPLITS}
    for voice in voices:
        if _matches(voice.id, test_patterns):
            splits["test"].append(voice)
        elif _matches(voice.id, dev_patterns):
            splits["dev"].append(voice)
        else:
            splits["train"].append(voice)
    speakers = {s: {v.speaker for v in vs} for s, vs in splits.items()}
    for a, b in (("train", "test"), ("train", "dev"), ("dev", "test")):
        shared = speakers[a] & speakers[b]
        if shared:
            logger.warning("speakers %s have voices in both %s and %s: %s is not speaker-independent",
                           sorted(shared), a, b, b)
    return splits


def _largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    if total == 0 or sum(weights) <= 0:
        return [0] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_clips(
    voices: Sequence[Voice], n_clips: int, engine_weights: dict[str, float], seed: int
) -> list[tuple[Voice, int]]:
    """Clips per voice: n_clips shared among the engines present by weight, then evenly among the
    engine's voices; the remainder goes to a seeded random choice of them (not the first in order)."""
    engines = sorted({v.engine for v in voices})
    counts = _largest_remainder(n_clips, [engine_weights.get(e, 0.0) for e in engines])
    per_engine = dict(zip(engines, counts, strict=True))
    plan: list[tuple[Voice, int]] = []
    for engine in engines:
        engine_voices = [v for v in voices if v.engine == engine]
        base, extra = divmod(per_engine[engine], len(engine_voices))
        lucky = set(random.Random(stable_seed(seed, "plan", engine)).sample(range(len(engine_voices)), extra))
        plan += [(v, base + (i in lucky)) for i, v in enumerate(engine_voices)]
    return plan


def assign_sentences(
    plan: Sequence[tuple[Voice, int]], prompts: Sequence[Prompt], seed: int
) -> list[tuple[Voice, Prompt]]:
    """(voice, prompt) pairs: voices walk one shuffled sentence list in turn, so every sentence is used
    before any is reused, and a voice never reads a sentence twice."""
    if not prompts:
        return []
    order = list(prompts)
    random.Random(stable_seed(seed, "sentence-order")).shuffle(order)
    pairs: list[tuple[Voice, Prompt]] = []
    cursor = 0
    for voice, n in plan:
        if n > len(order):
            logger.warning("voice %s: %d clips asked but only %d sentences; using %d", voice.id, n,
                           len(order), len(order))
            n = len(order)
        pairs += [(voice, order[(cursor + i) % len(order)]) for i in range(n)]
        cursor = (cursor + n) % len(order)
    return pairs


def _write_clip(job: ClipJob, audio: np.ndarray) -> ClipResult:
    folder = job.out_dir / "wavs" / job.split / job.voice.id
    try:
        audio = normalize_peak(trim_silence(audio))
        clean_path = folder / f"{job.prompt.sentence_id}.wav"
        write_wav(clean_path, audio)
        utts = [Utterance(clean_path, audio.size / SAMPLE_RATE_HZ, job.prompt.text, job.voice.id,
                          job.prompt.sentence_id)]
        for k in range(1, job.augment_copies + 1):
            copy, _ = augment(audio, stable_seed(job.seed, "augment", k))
            path = folder / f"{job.prompt.sentence_id}-aug{k}.wav"
            write_wav(path, copy)
            utts.append(Utterance(path, copy.size / SAMPLE_RATE_HZ, job.prompt.text, job.voice.id,
                                  job.prompt.sentence_id))
    except (OSError, sf.LibsndfileError) as e:
        return ClipResult((), f"{job.split} {job.voice.id} {job.prompt.sentence_id}: {e}")
    return ClipResult(tuple(utts))


def make_clips(jobs: Sequence[ClipJob]) -> list[ClipResult]:
    """Synthesize clips of one voice (plus their augmented copies) and write the wavs.

    One result per job, in order; a failed clip becomes a ClipResult with an error, never an exception.
    """
    if len({job.voice for job in jobs}) > 1:
        raise ValueError("make_clips takes jobs of a single voice")
    if not jobs:
        return []
    voice = jobs[0].voice
    prosodies = [random_prosody(voice, np.random.default_rng(job.seed)) for job in jobs]
    try:
        audios = synthesize_many(voice, [j.prompt.spoken for j in jobs], prosodies, timeout_s=jobs[0].timeout_s)
    except ValueError:
        if len(jobs) > 1:  # one unspeakable text: let each clip succeed or fail on its own
            return [result for job in jobs for result in make_clips([job])]
        return [ClipResult((), f"{jobs[0].split} {voice.id} {jobs[0].prompt.sentence_id}: unspeakable text "
                               f"{jobs[0].prompt.spoken!r}")]
    return [ClipResult((), f"{job.split} {voice.id} {job.prompt.sentence_id}: {audio}")
            if isinstance(audio, SynthesisError) else _write_clip(job, audio)
            for job, audio in zip(jobs, audios, strict=True)]


def make_clip(job: ClipJob) -> ClipResult:
    """`make_clips` for one job."""
    return make_clips([job])[0]


def batch_jobs(jobs: Sequence[ClipJob], festival_batch: int = FESTIVAL_BATCH) -> list[list[ClipJob]]:
    """Runs of consecutive same-voice jobs: up to festival_batch per festival process, one otherwise."""
    batches: list[list[ClipJob]] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if (last is not None and job.voice.engine == "festival" and last[0].voice == job.voice
                and len(last) < festival_batch):
            last.append(job)
        else:
            batches.append([job])
    return batches


def _usable_voices(
    voices: Sequence[Voice], workers: int, timeout_s: float
) -> tuple[list[Voice], dict[str, str]]:
    """Voices that speak a test sentence; the others with the reason. Subprocess-bound, so threads."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(lambda v: check_voice(v, timeout_s=timeout_s), voices))
    unusable = {v.id: r for v, r in zip(voices, reasons, strict=True) if r is not None}
    for voice_id, reason in unusable.items():
        logger.warning("voice %s is unusable and left out: %s", voice_id, reason)
    return [v for v in voices if v.id not in unusable], unusable


def _engine_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name, cmd in (("espeak-ng", ["espeak-ng", "--version"]), ("flite", ["flite", "--version"]),
                      ("festival", ["festival", "--version"])):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            versions[name] = next((ln for ln in lines if "version" in ln.lower()), lines[0]).strip()
        except (OSError, subprocess.TimeoutExpired, IndexError):
            versions[name] = "unavailable"
    return versions


def build_corpus(cfg: CorpusConfig, command: str = "") -> dict[str, Any]:
    """Build the corpus described by cfg under cfg.out_dir; returns the summary written to corpus.json.

    Raises ValueError for an unusable plan (a pattern matching no voice, a split with clips but no
    voices or sentences, an existing corpus without overwrite).
    """
    out = cfg.out_dir
    if (out / "corpus.json").exists() and not cfg.overwrite:
        raise ValueError(f"{out} already holds a corpus (corpus.json); "
                         "pass --overwrite to rebuild it in place")
    registry = all_voices()
    for flag, patterns in (("--voices", cfg.voices), ("--dev-voices", cfg.dev_voices),
                           ("--test-voices", cfg.test_voices)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(v.id, pattern) for v in registry):
                raise ValueError(f"{flag} pattern {pattern!r} matches no voice; see --list-voices")
    weights = dict(cfg.engine_weights)
    selected = [v for v in registry if _matches(v.id, cfg.voices) and weights.get(v.engine, 0.0) > 0]
    usable, unusable = _usable_voices(selected, cfg.workers, cfg.timeout_s)
    voices = split_voices(usable, cfg.dev_voices, cfg.test_voices)

    prompts = build_prompts(cfg.sentences, cfg.seed)
    sentences = hold_out(prompts, cfg.dev_fraction, cfg.test_fraction, cfg.seed)
    by_split = {"train": sentences.train, "dev": sentences.dev, "test": sentences.test}
    clips_wanted = {"train": cfg.train_clips, "dev": cfg.dev_clips, "test": cfg.test_clips}
    jobs: list[ClipJob] = []
    for split in SPLITS:
        if clips_wanted[split] == 0:
            continue
        if not voices[split] or not by_split[split]:
            raise ValueError(f"{split}: {clips_wanted[split]} clips asked but {len(voices[split])} usable "
                             f"voices and {len(by_split[split])} sentences")
        plan = plan_clips(voices[split], clips_wanted[split], weights, cfg.seed)
        copies = cfg.augment_copies if split == "train" else 0
        jobs += [ClipJob(split, v, p, stable_seed(cfg.seed, split, v.id, p.sentence_id), copies, out,
                         cfg.timeout_s) for v, p in assign_sentences(plan, by_split[split], cfg.seed)]
    logger.info("%d clips to synthesize (%s) from %d voices, %d workers", len(jobs),
                ", ".join(f"{s} {sum(j.split == s for j in jobs)}" for s in SPLITS), len(usable), cfg.workers)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: list[ClipResult] = []
    with ProcessPoolExecutor(max_workers=cfg.workers) as pool, \
            tqdm(total=len(jobs), unit="clip", desc="synthesizing", disable=None) as progress:
        for batch_results in pool.map(make_clips, batch_jobs(jobs), chunksize=2):
            results += batch_results
            progress.update(len(batch_results))
    elapsed_s = time.perf_counter() - t0

    manifests: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    failures: list[tuple[ClipJob, str]] = []
    for job, result in zip(jobs, results, strict=True):
        if result.error:
            failures.append((job, result.error))
        manifests[job.split] += result.utterances
    for split in SPLITS:
        write_manifest(out / f"{split}.jsonl", manifests[split])
    (out / "lm_text.txt").write_text("".join(p.text + "\n" for p in sentences.train), encoding="utf-8")
    (out / "dev_text.txt").write_text("".join(p.text + "\n" for p in sentences.dev), encoding="utf-8")
    for _, message in failures[:5]:
        logger.warning("skipped: %s", message)
    if failures:
        logger.warning("%d of %d clips failed and were skipped (all listed in corpus.json)",
                       len(failures), len(jobs))

    summary: dict[str, Any] = {
        "command": command,
        "seed": cfg.seed,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "sentences": {split: len(by_split[split]) for split in SPLITS}
        | {"by_source": dict(Counter(p.source for p in prompts))},
        "splits": {
            split: {
                "clips": len(manifests[split]),
                "clean_clips": sum(1 for j, r in zip(jobs, results, strict=True)
                                   if j.split == split and r.utterances),
                "failed_clips": sum(1 for j, _ in failures if j.split == split),
                "hours": sum(u.duration_s for u in manifests[split]) / 3600,
                "voices": sorted({u.speaker for u in manifests[split]}),
                "sentences_spoken": len({u.sentence_id for u in manifests[split]}),
            }
            for split in SPLITS
        },
        "voices_assigned": {split: [v.id for v in voices[split]] for split in SPLITS},
        "unusable_voices": unusable,
        "failures": {"count": len(failures), "by_voice": dict(Counter(j.voice.id for j, _ in failures)),
                     "messages": [m for _, m in failures]},
        "synthesis": {"workers": cfg.workers, "elapsed_s": round(elapsed_s, 2),
                      "clean_clips_per_s": round(len(jobs) / elapsed_s, 2) if elapsed_s > 0 else None},
        "engines": _engine_versions(),
    }
    tmp = out / ".corpus.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "corpus.json")
    return summary


def _parse_weights(text: str) -> tuple[tuple[str, float], ...]:
    pairs = []
    for item in text.split(","):
        engine, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected ENGINE=WEIGHT, got {item!r}")
        try:
            pairs.append((engine.strip(), float(value)))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"weight of {engine!r} is not a number: {value!r}") from e
    return tuple(pairs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nui data speech",
                                description="Build the synthetic speech corpus (wavs + NeMo manifests).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (required unless --list-voices)")
    p.add_argument("--sentences", type=int, default=20000, help="distinct sentences to generate")
    p.add_argument("--dev-fraction", type=float, default=0.05, help="share of sentences held out for dev")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of sentences held out for test")
    p.add_argument("--train-clips", type=int, default=20000, help="clean train clips (before augmentation)")
    p.add_argument("--dev-clips", type=int, default=1000)
    p.add_argument("--test-clips", type=int, default=1000)
    p.add_argument("--augment-copies", type=int, default=1, help="augmented copies of each train clip")
    p.add_argument("--voices", nargs="+", default=["*"], metavar="PATTERN", help="voice ids to use at all")
    p.add_argument("--dev-voices", nargs="*", default=list(DEFAULT_DEV_VOICES), metavar="PATTERN")
    p.add_argument("--test-voices", nargs="*", default=list(DEFAULT_TEST_VOICES), metavar="PATTERN")
    p.add_argument("--engine-weights", type=_parse_weights, default=_parse_weights(DEFAULT_ENGINE_WEIGHTS),
                   help=f"share of each split's clips per engine, e.g. {DEFAULT_ENGINE_WEIGHTS}")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=60.0, help="limit per synthesizer call")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing corpus in place")
    p.add_argument("--list-voices", action="store_true", help="print voice ids with their default split")
    return p


def main(argv: list[str] | None = None) -> int:
    """`nui data speech ...`: returns 0 on success, 1 when the build failed, 2 on bad arguments."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.list_voices:
        default = split_voices(all_voices(), DEFAULT_DEV_VOICES, DEFAULT_TEST_VOICES)
        for split in SPLITS:
            for v in default[split]:
                sys.stdout.write(f"{v.id}\t{v.engine}\t{v.speaker}\t{split}\n")
        return 0
    if args.out is None:
        parser.error("--out is required")
    try:
        cfg = CorpusConfig(
            out_dir=args.out, sentences=args.sentences, dev_fraction=args.dev_fraction,
            test_fraction=args.test_fraction, train_clips=args.train_clips, dev_clips=args.dev_clips,
            test_clips=args.test_clips, augment_copies=args.augment_copies, voices=tuple(args.voices),
            dev_voices=tuple(args.dev_voices), test_voices=tuple(args.test_voices),
            engine_weights=args.engine_weights, workers=args.workers, seed=args.seed,
            timeout_s=args.timeout_s, overwrite=args.overwrite,
        )
    except ValueError as e:
        parser.error(str(e))
    try:
        summary = build_corpus(cfg, command=shlex.join(["nui", "data", "speech", *argv]))
    except ValueError as e:
        logger.error("%s", e)
        return 1
    splits = summary["splits"]
    for split in SPLITS:
        s = splits[split]
        logger.info("%s: %d clips (%d failed), %.2f h, %d voices, %d sentences", split, s["clips"],
                    s["failed_clips"], s["hours"], len(s["voices"]), s["sentences_spoken"])
    empty = [s for s, n in (("train", cfg.train_clips), ("dev", cfg.dev_clips), ("test", cfg.test_clips))
             if n > 0 and splits[s]["clips"] == 0]
    if empty:
        logger.error("no clip could be made for %s; see the failures in %s", ", ".join(empty),
                     cfg.out_dir / "corpus.json")
        return 1
    logger.info("wrote %s", cfg.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
