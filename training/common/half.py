"""FP16 arithmetic with FP32 islands for a torch model, applied from outside (the model file never knows).

    model = half_with_fp32_islands(model, island_modules=("featurizer", "feature_norm"))

Parameters and buffers of every module become FP16 except inside the islands: the named submodules and
every module of `island_types` (LayerNorm by default) keep FP32 weights and get their floating inputs
cast to FP32; every other layer with weights gets its inputs cast to FP16. So convolutions, GRUs and
linear layers compute in FP16 (on a GPU: FP16 tensor-core GEMMs and cuDNN's FP16 RNN; on a CPU: torch's
FP16 kernels), which the ONNX Runtime CPU gate (engines/fp16.py) cannot show: its CPU provider runs
those ops in FP32 on FP16-rounded tensors. The islands match engines/fp16.py's plan for the same model.
Used by `nui eval speech-fp16`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def half_with_fp32_islands(model: M, island_modules: tuple[str, ...] = (),
                           island_types: tuple[type[nn.Module], ...] = (nn.LayerNorm,)) -> M:
    """Convert `model` in place (see the module docstring) and return it."""
    names = dict(model.named_modules())
    missing = [n for n in island_modules if n not in names]
    if missing:
        raise ValueError(f"island modules {missing} are not submodules of {type(model).__name__}")
    islands = [m for n, m in names.items() if n in island_modules or isinstance(m, island_types)]
    inside = {id(sub) for m in islands for sub in m.modules()}
    for m in model.modules():
        if id(m) in inside:
            continue
        owns = False
        for p in m.parameters(recurse=False):
            p.data = p.data.half()
            owns = True
        for key, b in list(m.named_buffers(recurse=False)):
            if b.is_floating_point():
                setattr(m, key, b.half())
                owns = True
        if owns:  # a compute layer outside the islands: FP16 in, FP16 out
            m.register_forward_pre_hook(lambda _m, args: _cast(args, torch.float16))
    for m in islands:  # FP32 in, FP32 out: two islands in a row never round through FP16 in between
        m.register_forward_pre_hook(lambda _m, args: _cast(args, torch.float32))
    return model
