"""Checkpoints without pickle: safetensors for every tensor, JSON for everything else.

A checkpoint is a folder `<run>/checkpoints/step_<N>/` holding
- `model.safetensors`  FP32 master weights; metadata carries the model name and its config (JSON), so a
                        checkpoint describes itself;
- `optimizer.safetensors` + `optimizer.json`  optimizer tensors / scalars and param groups;
- `rng.safetensors`    torch CPU (and CUDA) generator states;
- `state.json`         run state (step, epoch, position in the epoch, best score), python/numpy RNG
                        state, AMP loss-scaler state.
It is written into a temporary folder and renamed into place, and `latest` is replaced atomically, so
a crash mid-save never leaves a half checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FORMAT = "nui-checkpoint-1"


@dataclass
class RunState:
    """Where training is; kept apart from the (immutable) configuration."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_score: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch metrics


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_weights(path: Path, model: torch.nn.Module, model_name: str, config: dict[str, Any],
                 dtype: torch.dtype | None = None) -> None:
    """Weights (optionally cast, e.g. to FP16 for a bundled copy) with the model name and config."""
    sd = {k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"format": FORMAT, "model": model_name, "config": json.dumps(config)})


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """(state dict, model name, model config dict) of a `model.safetensors` written by save_weights."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a nui checkpoint (metadata format {meta.get('format')!r})")
    return load_file(str(path)), meta["model"], json.loads(meta["config"])


def read_model_weights(path: Path, model_name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """FP32 state dict and config of `model_name` from a run folder (latest checkpoint), a checkpoint
    folder or a model.safetensors (FP32 or FP16), and the file they came from; ValueError for another model."""
    weights = resolve_weights(path)
    state, name, cfg = read_weights(weights)
    if name != model_name:
        raise ValueError(f"{weights} holds a {name!r} model, not {model_name}")
    return {k: v.float() for k, v in state.items()}, cfg, weights


def save_checkpoint(run_dir: Path, *, model: torch.nn.Module, model_name: str, model_config: dict[str, Any],
                    optimizer: torch.optim.Optimizer, state: RunState, scaler_state: dict[str, Any] | None,
                    recipe: dict[str, Any], keep: int = 3, extra_files: dict[str, str] | None = None) -> Path:
    """Write checkpoint `step_<state.step>` atomically; keep the newest `keep`. extra_files: name -> text
    written into the checkpoint folder too (e.g. the captioner's tokenizer.json next to its weights)."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".tmp-"))
    try:
        save_weights(tmp / "model.safetensors", model, model_name, model_config)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda_{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        py_state = random.getstate()
        np_state: tuple[Any, ...] = tuple(np.random.get_state())
        (tmp / "state.json").write_text(json.dumps({
            "run": asdict(state),
            "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "scaler": scaler_state,
            "recipe": recipe,
        }, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = ckpt_root / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, ckpt_root / "latest")
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def resolve_weights(path: Path) -> Path:
    """The model.safetensors of a run folder (its latest checkpoint), a checkpoint folder, or the file."""
    if path.is_file():
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"{path} is neither a checkpoint, a model.safetensors, nor a run with checkpoints")
    return latest / "model.safetensors"


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


@dataclass
class LoadedCheckpoint:
    state: RunState
    scaler: dict[str, Any] | None
    recipe: dict[str, Any]


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    restore_rng: bool = True) -> LoadedCheckpoint:
    """Restore weights (and optimizer + RNG state) in place; returns the run state."""
    sd, _, _ = read_weights(path / "model.safetensors")
    model.load_state_dict(sd)
    if optimizer is not None:
        meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta))
    blob = json.loads((path / "state.json").read_text())
    if restore_rng:
        rng = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(rng["torch_cpu"])
        cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        v, internal, gauss = blob["python_rng"]
        random.setstate((v, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = blob["numpy_rng"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return LoadedCheckpoint(state=RunState(**blob["run"]), scaler=blob["scaler"], recipe=blob["recipe"])


def resume(run_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler, enabled: bool, log: bool) -> RunState:
    """Continue from the run's latest checkpoint when there is one (and `enabled`), restoring weights,
    optimizer, RNG and loss-scaler state; a fresh RunState otherwise."""
    latest = latest_checkpoint(run_dir) if enabled else None
    if latest is None:
        return RunState()
    loaded = load_checkpoint(latest, model=model, optimizer=optimizer)
    if loaded.scaler:
        scaler.load_state_dict(loaded.scaler)
    if log:
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", latest, loaded.state.step,
                    loaded.state.epoch, loaded.state.batch_in_epoch)
    return loaded.state
