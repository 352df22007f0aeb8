"""The speech engines' batch input (numpy only): waveforms zero-padded to the longest plus their lengths.

One definition for every caller that builds an `audio` / `audio_lengths` feed: the export gates
(engines/), the server's batches (server/speech_ctc.py) and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad 1-D waveforms to the longest: audio (B, S_max) float32, lengths (B,) int64."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    audio = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    return audio, lengths
