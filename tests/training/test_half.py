"""FP16 arithmetic with FP32 islands applied from outside a torch model (training/common/half.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from engines.export_speech import noise_clips
from models.speech_ctc import build, get_preset
from training.common.half import half_with_fp32_islands


def test_layers_run_in_fp16_and_islands_in_fp32() -> None:
    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    half = half_with_fp32_islands(build(get_preset("tiny")).eval(), ("featurizer", "feature_norm"))
    half.load_state_dict(model.state_dict())  # copies into the converted dtypes
    rnn0: Any = half.rnns[0]
    assert rnn0.fwd.weight_ih_l0.dtype == torch.float16 and half.classifier.weight.dtype == torch.float16
    assert half.featurizer.dft.dtype == torch.float32 and rnn0.norm.weight.dtype == torch.float32
    seen: dict[str, torch.dtype] = {}

    def record(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            seen[name] = (out[0] if isinstance(out, tuple) else out).dtype
        return hook

    rnn0.fwd.register_forward_hook(record("gru_out"))
    half.feature_norm.register_forward_hook(record("norm_out"))
    audio = torch.from_numpy(noise_clips(1)[0])[None]
    lengths = torch.tensor([audio.shape[1]])
    with torch.no_grad():
        lp32, n32 = model(audio, lengths)
        lp16, n16 = half(audio, lengths)
    assert seen == {"gru_out": torch.float16, "norm_out": torch.float32}
    assert lp16.dtype == torch.float32 and torch.equal(n32, n16)
    diff = (lp16.exp() - lp32.exp()).abs().max().item()
    assert 0 < diff < 0.02, diff


def test_unknown_island_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\['featuriser'\] are not submodules"):
        half_with_fp32_islands(build(get_preset("tiny")), ("featuriser",))
