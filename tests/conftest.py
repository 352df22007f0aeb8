"""Fixtures shared across test packages: a tiny synthesized speech corpus (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from models.caption_text import CaptionTokenizer
    from models.captioner import Captioner


@pytest.fixture(scope="session")
def tiny_speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 4 dev + 4 test clips from espeak-ng and flite voices, split by voice and sentence."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (bash scripts/setup.sh installs it)")
    from training.speech_ctc import corpus

    out = tmp_path_factory.mktemp("speech_corpus")
    rc = corpus.main(["--out", str(out), "--sentences", "300", "--train-clips", "16", "--dev-clips", "4",
                      "--test-clips", "4", "--augment-copies", "0", "--workers", "2",
                      "--engine-weights", "espeak=0.75,flite=0.25,festival=0", "--seed", "3"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_captioner() -> tuple[Captioner, CaptionTokenizer]:
    """(model, tokenizer): the tiny captioner trained to say two captions (tests/captioner_tiny.py)."""
    from tests.captioner_tiny import trained_tiny_captioner

    return trained_tiny_captioner()
