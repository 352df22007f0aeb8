"""Mixed precision applied from outside the model: autocast + loss scaling, FP32 master weights.

Deep Speech 2 trained in FP16 with FP32 master weights (section 7.3). Here the weights stay FP32 (the
optimizer only ever sees FP32 parameters and gradients); autocast runs matmuls/convs/GRUs in low
precision. FP16 on CUDA needs loss scaling (GradScaler); bf16 has FP32's exponent range, so none.
The model itself computes log-softmax in FP32, and the CTC loss runs outside autocast in FP32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

AmpMode = Literal["auto", "none", "fp16", "bf16"]


def resolve_amp(mode: AmpMode, device: torch.device) -> Literal["none", "fp16", "bf16"]:
    """"auto": FP16 on CUDA; bf16 on CPUs with native bf16 (AVX512-BF16/AMX), where it is ~1.4x faster
    than FP32 for the small speech model; FP32 on other CPUs, where emulated bf16 is slower."""
    if mode == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "none"
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA (use bf16 on CPU)")
    return mode


@contextlib.contextmanager
def autocast(mode: Literal["none", "fp16", "bf16"], device: torch.device) -> Iterator[None]:
    if mode == "none":
        yield
        return
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_scaler(mode: Literal["none", "fp16", "bf16"], device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling for FP16; a disabled (pass-through) scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=(mode == "fp16"))


def backward_and_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, clip_grad_norm: float) -> torch.Tensor:
    """Scaled backward, unscale, clip the FP32 gradients' global norm, step (skipped by the scaler on
    inf/nan under FP16), update the loss scale. Returns the pre-clip gradient norm."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return grad_norm
