"""The speech CTC training recipe: nested frozen dataclasses, parsed from YAML by training.common.config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from models.speech_ctc import SpeechCTCConfig, get_preset
from training.common.optim import OptimSection
from training.speech_ctc.augment import AugmentSection


@dataclass(frozen=True)
class ModelSection:
    preset: str = "small"  # a name in models.speech_ctc.PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # SpeechCTCConfig fields to change
    # fine-tuning: a run folder, checkpoint folder or model.safetensors whose weights start this run
    # (ignored when the run resumes from its own checkpoint)
    init_from: str = ""

    def build_config(self) -> SpeechCTCConfig:
        base = get_preset(self.preset).to_dict()
        unknown = sorted(set(self.overrides) - set(base))
        if unknown:
            raise ValueError(f"model.overrides: unknown SpeechCTCConfig fields {unknown}")
        return SpeechCTCConfig.from_dict({**base, **self.overrides})


@dataclass(frozen=True)
class DataSection:
    train_manifest: str = ""  # NeMo-style JSONL (audio_filepath, duration, text)
    dev_manifest: str = ""
    batch_size: int = 16  # utterances per rank per step
    max_duration_s: float = 20.0  # longer training utterances are skipped (counted in the log)
    dev_limit: int = 0  # evaluate on a seeded random sample of N dev utterances (0 = all)
    num_workers: int = 2  # DataLoader worker processes per rank (loading only; order is fixed)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("data.batch_size must be >= 1")


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/speech_ctc"
    epochs: int = 10
    seed: int = 1234
    deterministic: bool = False  # deterministic kernels; bitwise-reproducible runs (slower on GPU)
    amp: Literal["auto", "none", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sortagrad: bool = True  # first epoch in order of increasing duration (DS2 section 3.1)
    log_every_steps: int = 20
    save_every_steps: int = 500  # plus one at the end of every epoch
    stop_after_steps: int = 0  # stop (after saving) once this many steps are done; 0 = run to the end
    resume: bool = True  # continue from out_dir/checkpoints/latest when present


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    run: RunSection = field(default_factory=RunSection)
