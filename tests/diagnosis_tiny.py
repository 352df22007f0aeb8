"""A tiny diagnosis knowledge table and model (the "tiny" preset: 32 symptoms, 8 diseases) for tests."""

from __future__ import annotations

import numpy as np
import torch

from models.diagnosis import DiagnosisModel, build, get_preset
from models.diagnosis_dialog import DiagnosisTables, DiseaseInfo, SymptomInfo

N_SYMPTOMS, N_DISEASES = 32, 8


def symptom_id(i: int) -> str:
    return f"HP:{9000000 + i:07d}"


def tiny_tables(seed: int = 0) -> DiagnosisTables:
    """Each disease has 5 characteristic symptoms (P 0.5-0.95) of 32; symptom 31 is female-only."""
    rng = np.random.default_rng(seed)
    probabilities = np.zeros((N_DISEASES, N_SYMPTOMS), dtype=np.float32)
    for d in range(N_DISEASES):
        probabilities[d, rng.choice(N_SYMPTOMS, size=5, replace=False)] = rng.uniform(0.5, 0.95, 5).round(2)
    return DiagnosisTables(
        diseases=[DiseaseInfo(id=f"ORPHA:{100 + d}", name=f"Disease {d}", icd10=f"X{d:02d}.0" if d % 2 else "",
                              xrefs=(f"OMIM:{600000 + d}",)) for d in range(N_DISEASES)],
        symptoms=[SymptomInfo(id=symptom_id(s), name=f"Symptom {s}", lay_names=(f"lay symptom {s}",) if s % 3 == 0
                              else (), synonyms=(f"syn {s}",), sex="female" if s == N_SYMPTOMS - 1 else "")
                  for s in range(N_SYMPTOMS)],
        probabilities=probabilities)


def tiny_model(seed: int) -> DiagnosisModel:
    """The tiny preset with random weights, its wide path too (it starts at zero; given weights so that
    exports carry and check it)."""
    torch.manual_seed(seed)
    model = build(get_preset("tiny"))
    with torch.no_grad():
        assert model.wide is not None
        model.wide.weight.normal_(0, 0.5)
    return model.eval()
