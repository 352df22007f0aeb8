"""Load a diagnosis model from a run folder, a checkpoint folder or a model.safetensors, and run it over
synthetic patients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.diagnosis import DiagnosisConfig, DiagnosisModel, build
from training.common.checkpoint import read_model_weights
from training.diagnosis.dataset import make_batch
from training.diagnosis.patients import Patients

MODEL_NAME = "diagnosis"


def load_model(path: Path) -> tuple[DiagnosisModel, Path]:
    """(model in eval mode with FP32 weights, the weights file it came from)."""
    state, cfg, weights = read_model_weights(path, MODEL_NAME)
    model = build(DiagnosisConfig.from_dict(cfg))
    model.load_state_dict(state)
    return model.eval(), weights


@torch.no_grad()
def predict_logits(model: DiagnosisModel, patients: Patients, rows: np.ndarray | None = None,
                   device: torch.device | None = None, batch_size: int = 1024) -> np.ndarray:
    """(len(rows), D) float32 logits (divided by the model's temperature) with every finding shown."""
    rows = np.arange(len(patients)) if rows is None else rows
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        b = make_batch(patients, rows[start:start + batch_size], model.cfg.n_symptoms).to(device)
        out.append(model(b.evidence, b.age_years, b.sex).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.cfg.n_diseases), dtype=np.float32)
