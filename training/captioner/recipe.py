"""The captioner training recipe: nested frozen dataclasses, parsed from YAML by training.common.config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from models.captioner import CaptionerConfig, get_preset
from training.common.optim import OptimSection


@dataclass(frozen=True)
class ModelSection:
    preset: str = "small"  # a name in models.captioner.PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # CaptionerConfig fields to change
    pretrained_encoder: bool = True  # load the ImageNet EfficientNet-Lite0 weights (efficientnet_lite0 only)

    def build_config(self, vocab_size: int) -> CaptionerConfig:
        """The preset with the overrides, sized for the tokenizer (its vocabulary size always wins)."""
        base = get_preset(self.preset).to_dict()
        unknown = sorted(set(self.overrides) - (set(base) - {"vocab_size"}))
        if unknown:
            raise ValueError(f"model.overrides: unknown or tokenizer-sized CaptionerConfig fields {unknown}")
        return dataclasses.replace(CaptionerConfig.from_dict({**base, **self.overrides}), vocab_size=vocab_size)


@dataclass(frozen=True)
class DataSection:
    dir: str = "data/captions"  # folder with COCO-captions JSON files (`nui data captions` / `nui data coco`)
    train_file: str = "captions_train.json"
    val_file: str = "captions_val.json"  # per-epoch BLEU/CIDEr; "" for none
    batch_size: int = 64  # images per rank per step (one of each image's captions, drawn per epoch)
    train_limit: int = 0  # train on the first N images (0 = all)
    val_limit: int = 0  # evaluate on the first N val images (0 = all)
    min_word_count: int = 2  # rarer training words map to [UNK]
    max_vocab: int = 0  # cap on the vocabulary, specials included (0 = no cap)
    # Frozen encoder: run it once per image and train the decoder on the cached feature maps (exact: a
    # frozen encoder with BatchNorm in eval mode is a fixed function of the image).
    cache_features: bool = True
    num_workers: int = 0  # DataLoader worker processes per rank when images are decoded during training

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.min_word_count < 1:
            raise ValueError("data.batch_size and data.min_word_count must be >= 1")


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/captioner"
    epochs: int = 10
    seed: int = 1234
    deterministic: bool = False  # deterministic kernels; bitwise-reproducible runs
    amp: Literal["auto", "none", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    label_smoothing: float = 0.1  # cross-entropy label smoothing (Szegedy et al. 2016, section 7)
    eval_batch_size: int = 128
    log_every_steps: int = 20
    save_every_steps: int = 500  # plus one at the end of every epoch
    stop_after_steps: int = 0  # stop (after saving) once this many steps are done; 0 = run to the end
    resume: bool = True  # continue from out_dir/checkpoints/latest when present

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("run.label_smoothing must be in [0, 1)")
        if self.epochs < 1 or self.log_every_steps < 1 or self.save_every_steps < 1:
            raise ValueError("run.epochs, run.log_every_steps and run.save_every_steps must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
