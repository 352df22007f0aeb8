"""The diagnosis training recipe: nested frozen dataclasses, parsed from YAML by training.common.config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from models.diagnosis import DiagnosisConfig, get_preset
from training.common.optim import OptimSection


@dataclass(frozen=True)
class ModelSection:
    preset: str = "small"  # a name in models.diagnosis.PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # DiagnosisConfig fields to change
    # "naive_bayes": start the wide path at the knowledge base's naive-Bayes log-likelihoods (present
    # channel log q, absent channel log(1 - q), q floored as the dialog floors it) and the MLP's output
    # layer at zero, so training starts from naive Bayes and learns corrections; "zeros": the model's own init
    init_wide: Literal["zeros", "naive_bayes"] = "zeros"

    def build_config(self, n_symptoms: int, n_diseases: int, kb_fingerprint: str = "") -> DiagnosisConfig:
        """The preset with the overrides, sized for a knowledge base (its sizes always win)."""
        base = get_preset(self.preset).to_dict()
        sized = {"n_symptoms", "n_diseases", "kb_fingerprint"}
        unknown = sorted(set(self.overrides) - (set(base) - sized))
        if unknown:
            raise ValueError(f"model.overrides: unknown or data-sized DiagnosisConfig fields {unknown}")
        cfg = DiagnosisConfig.from_dict({**base, **self.overrides})
        return dataclasses.replace(cfg, n_symptoms=n_symptoms, n_diseases=n_diseases, kb_fingerprint=kb_fingerprint)


@dataclass(frozen=True)
class DataSection:
    dir: str = "data/diagnosis"  # `nui data diagnosis --out` folder: KB CSVs + patients_{train,dev}.npz
    batch_size: int = 256  # patients per rank per step
    dev_limit: int = 0  # evaluate on the first N dev patients (0 = all)
    train_limit: int = 0  # train on the first N training patients (0 = all)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("data.batch_size must be >= 1")


@dataclass(frozen=True)
class MaskingSection:
    """Random hiding of findings during training, so the model works with partial information."""

    keep_all: float = 0.25  # share of patients shown with every finding
    min_keep: float = 0.2  # otherwise each finding is kept with probability u ~ U(min_keep, 1) per patient
    min_present: int = 1  # at least this many present findings survive (when the patient had them)
    hide_sex: float = 0.2  # extra probability of hiding a reported sex...
    hide_age: float = 0.2  # ...and a reported age
    # Dialog states (training/diagnosis/dataset.py `dialog_states`): this share of patients is shown as a
    # symptom-checker conversation would leave them: 1..dialog_start_present of their present findings,
    # then up to dialog_max_questions questions chosen by expected information gain and answered from the
    # patient's record (mostly "no"), asked in dialog_rounds rounds. 0 turns them off.
    dialog_share: float = 0.0
    dialog_start_present: int = 3
    dialog_max_questions: int = 20
    dialog_rounds: int = 3

    def __post_init__(self) -> None:
        for name in ("keep_all", "min_keep", "hide_sex", "hide_age", "dialog_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"masking.{name} must be in [0, 1]")
        if self.dialog_start_present < 1 or self.dialog_max_questions < 0 or self.dialog_rounds < 1:
            raise ValueError("masking.dialog_start_present and dialog_rounds must be >= 1, "
                             "dialog_max_questions >= 0")


@dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/diagnosis"
    epochs: int = 5
    seed: int = 1234
    deterministic: bool = False  # deterministic kernels; bitwise-reproducible runs
    amp: Literal["auto", "none", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every_steps: int = 50
    save_every_steps: int = 1000  # plus one at the end of every epoch
    stop_after_steps: int = 0  # stop (after saving) once this many steps are done; 0 = run to the end
    resume: bool = True  # continue from out_dir/checkpoints/latest when present
    calibrate: bool = True  # fit the temperature on dev after the last epoch


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
