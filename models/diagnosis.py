"""Symptom-checker model: evidence over a fixed symptom vocabulary (+ optional age and sex) -> disease logits.

Shapes: B batch, S symptoms, D diseases, H hidden size, A age buckets (len(AGE_EDGES_YEARS) + 1).

    forward(evidence (B, S) float32: +1 present, -1 absent, 0 unknown,
            age_years (B,) float32: age in years, negative = unknown,
            sex (B,) int64: 0 unknown, 1 female, 2 male) -> logits (B, D) float32

Dynamic axis: B. softmax(logits) is the distribution over diseases; the logits are already divided by
`temperature`, a buffer fitted on held-out patients after training (Guo et al. 2017, "On Calibration of
Modern Neural Networks", section 4.2), so an exported graph is calibrated as is.

Present and absent findings enter through separate weights (two channels): "no fever" is evidence of its
own, not minus "fever". Unknown findings and unknown age/sex contribute nothing, so the same model scores a
first complaint or a finished interview; training hides random findings to teach it that (the masking
lives in training/diagnosis/dataset.py, not here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Age buckets [0, 1), [1, 6), [6, 16), [16, 40), [40, 60), [60, inf) years: infant, pre-school, school age,
# young adult, middle age, older adult (HPO's onset classes line up with these edges).
AGE_EDGES_YEARS: tuple[float, ...] = (1.0, 6.0, 16.0, 40.0, 60.0)
N_AGE_BUCKETS = len(AGE_EDGES_YEARS) + 1
SEX_UNKNOWN, SEX_FEMALE, SEX_MALE = 0, 1, 2


@dataclass(frozen=True)
class DiagnosisConfig:
    n_symptoms: int = 32  # S: size of the symptom vocabulary (set from the knowledge base)
    n_diseases: int = 8  # D: number of diseases (set from the knowledge base)
    hidden: int = 256  # H
    n_blocks: int = 2  # residual MLP blocks after the evidence encoder
    dropout: float = 0.1
    use_demographics: bool = True  # age bucket and sex inputs (ignored, but still accepted, when False)
    # a linear path from the evidence channels straight to the logits ("wide & deep", Cheng et al. 2016):
    # it can hold naive Bayes' per-finding log-likelihood ratios, the MLP learns what they miss
    wide: bool = True
    # sha256 of the knowledge base's symptom and disease id lists (its input/output order); "" = unchecked
    kb_fingerprint: str = ""

    def __post_init__(self) -> None:
        for name in ("n_symptoms", "n_diseases", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {self.n_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiagnosisConfig:
        return cls(**d)


PRESETS: dict[str, DiagnosisConfig] = {
    # unit tests: a few thousand parameters
    "tiny": DiagnosisConfig(n_symptoms=32, n_diseases=8, hidden=16, n_blocks=1, dropout=0.0),
    # bundled model: ~2.4M parameters (1.4M of them the wide path) for ~1.1k symptoms x ~600 diseases
    "small": DiagnosisConfig(n_symptoms=1146, n_diseases=607, hidden=256, n_blocks=2, dropout=0.1),
}


def get_preset(name: str) -> DiagnosisConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown diagnosis preset {name!r}; choose from {sorted(PRESETS)}") from None


def age_bucket_one_hot(age_years: torch.Tensor) -> torch.Tensor:
    """(B,) years -> (B, A) one-hot float; all zeros where the age is unknown (negative)."""
    edges = torch.tensor(AGE_EDGES_YEARS, dtype=age_years.dtype, device=age_years.device)
    bucket = (age_years[:, None] >= edges[None, :]).sum(dim=1)  # (B,)
    known = (age_years >= 0).to(age_years.dtype)
    buckets = torch.arange(N_AGE_BUCKETS, device=age_years.device)
    return (bucket[:, None] == buckets[None, :]).to(age_years.dtype) * known[:, None]


def sex_one_hot(sex: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) codes -> (B, 2) [female, male]; zeros where unknown."""
    codes = torch.tensor([SEX_FEMALE, SEX_MALE], device=sex.device)
    return (sex[:, None] == codes[None, :]).to(dtype)


class ResidualBlock(nn.Module):
    """Pre-norm MLP block: x + dropout(W2 gelu(W1 LN(x)))."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.fc2(F.gelu(self.fc1(self.norm(x)))))


class DiagnosisModel(nn.Module):
    """forward(evidence (B, S), age_years (B,), sex (B,)) -> logits (B, D); see the module docstring."""

    temperature: torch.Tensor  # () calibration temperature, 1.0 until fitted

    def __init__(self, cfg: DiagnosisConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.evidence = nn.Linear(2 * cfg.n_symptoms, cfg.hidden)  # [present | absent] channels
        self.demographics = nn.Linear(N_AGE_BUCKETS + 2, cfg.hidden, bias=False) if cfg.use_demographics else None
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.hidden, cfg.dropout) for _ in range(cfg.n_blocks))
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.classifier = nn.Linear(cfg.hidden, cfg.n_diseases)
        self.wide = nn.Linear(2 * cfg.n_symptoms, cfg.n_diseases, bias=False) if cfg.wide else None
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, evidence: torch.Tensor, age_years: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        channels = torch.cat([(evidence > 0).to(evidence.dtype), (evidence < 0).to(evidence.dtype)], dim=1)
        x = self.evidence(channels)  # (B, H)
        if self.demographics is not None:
            demo = torch.cat([age_bucket_one_hot(age_years.to(evidence.dtype)), sex_one_hot(sex, evidence.dtype)],
                             dim=1)  # (B, A + 2)
            x = x + self.demographics(demo)
        x = self.input_dropout(F.gelu(x))
        for block in self.blocks:
            x = block(x)
        logits = self.classifier(self.out_norm(x))  # (B, D)
        if self.wide is not None:
            logits = logits + self.wide(channels)
        # FP32 even under autocast: the softmax over hundreds of diseases feeds a calibrated probability.
        return logits.float() / self.temperature


def build(cfg: DiagnosisConfig) -> DiagnosisModel:
    return DiagnosisModel(cfg)
