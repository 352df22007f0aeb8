"""Speech training data: manifest -> padded batches, with SortaGrad and length-bucketed shuffling.

Batch order is a pure function of (seed, epoch, world size), so a resumed run replays exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from models.ctc_text import encode, normalize_text
from training.speech_ctc.augment import AugmentSection, perturb_speed
from training.speech_ctc.manifest import SAMPLE_RATE_HZ, Utterance, load_audio

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    audio: torch.Tensor  # (B, S) float32, zero-padded
    audio_lengths: torch.Tensor  # (B,) int64
    targets: torch.Tensor  # (sum of target lengths,) int64, concatenated
    target_lengths: torch.Tensor  # (B,) int64
    texts: list[str]


class SpeechDataset(Dataset[tuple[np.ndarray, list[int], str]]):
    """(audio, label ids, text) per utterance; with `augment`, the waveform is speed-perturbed by a factor
    drawn from (seed, epoch, index) — call `set_epoch` before each epoch's DataLoader is built."""

    def __init__(self, utts: Sequence[Utterance], augment: AugmentSection | None = None, seed: int = 0) -> None:
        self.utts = list(utts)
        self.augment = augment or AugmentSection()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> tuple[np.ndarray, list[int], str]:
        u = self.utts[i]
        text = normalize_text(u.text)
        audio = load_audio(u.audio_filepath)
        if self.augment.perturbs_speed:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            factor = float(rng.uniform(self.augment.speed_min, self.augment.speed_max))
            audio = perturb_speed(audio, factor, SAMPLE_RATE_HZ)
        return audio, encode(text), text


def collate(items: list[tuple[np.ndarray, list[int], str]]) -> Batch:
    lengths = [len(a) for a, _, _ in items]
    audio = torch.zeros(len(items), max(lengths))
    for i, (a, _, _) in enumerate(items):
        audio[i, : len(a)] = torch.from_numpy(a)
    return Batch(
        audio=audio,
        audio_lengths=torch.tensor(lengths, dtype=torch.int64),
        targets=torch.tensor([t for _, ids, _ in items for t in ids], dtype=torch.int64),
        target_lengths=torch.tensor([len(ids) for _, ids, _ in items], dtype=torch.int64),
        texts=[t for _, _, t in items],
    )


def filter_trainable(utts: Sequence[Utterance], max_duration_s: float, frames_per_s: float) -> list[Utterance]:
    """Drop utterances that are too long, have no text, or are too fast for CTC (more labels than
    output frames: no alignment exists). Counts are logged."""
    keep, too_long, too_fast, empty = [], 0, 0, 0
    for u in utts:
        n_labels = len(normalize_text(u.text))
        if n_labels == 0:
            empty += 1
        elif u.duration_s > max_duration_s:
            too_long += 1
        elif n_labels > u.duration_s * frames_per_s * 0.9:
            too_fast += 1
        else:
            keep.append(u)
    if too_long or too_fast or empty:
        logger.info("skipped %d too long (> %.0f s), %d too fast for CTC, %d empty of %d utterances",
                    too_long, max_duration_s, too_fast, empty, len(utts))
    return keep


class BucketBatchSampler(Sampler[list[int]]):
    """Per-rank batches of similar duration.

    Epoch 0 with SortaGrad: global batches in increasing duration (DS2 section 3.1). Later epochs:
    utterances are sorted by duration, cut into global batches (world_size * batch_size), and the
    order of those global batches is shuffled with seed + epoch. Rank r takes every world_size-th
    utterance of each global batch, so all ranks run the same number of steps on similar lengths.
    `start_batch` skips batches already consumed (exact resume).
    """

    def __init__(self, durations: Sequence[float], batch_size: int, rank: int, world_size: int, seed: int,
                 epoch: int, sortagrad: bool, start_batch: int = 0) -> None:
        order = np.argsort(np.asarray(durations), kind="stable")
        global_bs = batch_size * world_size
        n_full = len(order) // global_bs  # drop the ragged tail so every rank steps in lockstep
        if n_full == 0:
            raise ValueError(f"{len(order)} utterances are fewer than one global batch ({global_bs})")
        groups = [order[i * global_bs:(i + 1) * global_bs] for i in range(n_full)]
        if not (sortagrad and epoch == 0):
            perm = np.random.default_rng([seed, epoch]).permutation(n_full)
            groups = [groups[i] for i in perm]
        self.batches = [g[rank::world_size].tolist() for g in groups][start_batch:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def batches_per_epoch(n_utts: int, batch_size: int, world_size: int) -> int:
    return n_utts // (batch_size * world_size)
