"""Deep Speech 2 style CTC acoustic model: raw 16 kHz audio in, character log-probabilities out.

The featurizer (log-mel via a fixed DFT convolution) is part of the graph, so exported engines take
raw audio. Every stage masks the frames past each utterance's length, so an utterance's output is the
same whether it runs alone or padded inside a batch (the server's dynamic batcher relies on this).

Shapes: B batch, S audio samples, F mel bins, T feature frames, T' output frames, C conv channels,
H hidden size, V vocabulary size (29: blank, space, apostrophe, a-z).

Variants (Amodei et al. 2016, "Deep Speech 2", sections 3.1-3.5):
- bidirectional GRUs for offline recognition;
- unidirectional GRUs + a lookahead ("row") convolution over `lookahead_frames` future frames for
  streaming.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.ctc_text import VOCAB


@dataclass(frozen=True)
class SpeechCTCConfig:
    sample_rate_hz: int = 16000
    n_fft: int = 400  # 25 ms analysis window
    hop_length: int = 160  # 10 ms between feature frames
    n_mels: int = 64
    # "utterance": per-utterance mean/variance normalisation over valid frames (offline only);
    # "frame": LayerNorm over mel bins per frame (causal, for streaming).
    feature_norm: Literal["utterance", "frame"] = "utterance"
    conv_channels: int = 32
    conv_time_strides: tuple[int, ...] = (2, 1)  # one 2-D conv layer per entry; freq stride is 2 each
    conv_kernel_time: int = 11
    conv_kernel_freq: int = 21
    rnn_hidden: int = 256
    rnn_layers: int = 3
    bidirectional: bool = True
    lookahead_frames: int = 0  # row-convolution context (unidirectional only)
    vocab_size: int = len(VOCAB)

    def __post_init__(self) -> None:
        if self.bidirectional and self.lookahead_frames:
            raise ValueError("lookahead_frames is for unidirectional models; set bidirectional=False")
        if not self.bidirectional and self.feature_norm == "utterance":
            raise ValueError("a streaming (unidirectional) model needs feature_norm='frame'")
        if not self.conv_time_strides or any(s < 1 for s in self.conv_time_strides):
            raise ValueError(f"conv_time_strides must be positive, got {self.conv_time_strides}")
        if self.conv_kernel_time % 2 == 0 or self.conv_kernel_freq % 2 == 0:
            raise ValueError("conv kernels must have odd sizes")
        if self.n_mels >> len(self.conv_time_strides) < 1:
            raise ValueError("too many conv layers for n_mels (each halves the frequency axis)")
        if self.vocab_size != len(VOCAB):
            raise ValueError(f"vocab_size must be {len(VOCAB)} (the character vocabulary)")

    @property
    def time_stride(self) -> int:
        return math.prod(self.conv_time_strides)

    @property
    def frame_s(self) -> float:
        """Seconds per output frame."""
        return self.hop_length * self.time_stride / self.sample_rate_hz

    @property
    def min_samples(self) -> int:
        """Shortest input that yields one frame."""
        return self.n_fft

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_time_strides"] = list(self.conv_time_strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeechCTCConfig:
        d = dict(d)
        d["conv_time_strides"] = tuple(d["conv_time_strides"])
        return cls(**d)


PRESETS: dict[str, SpeechCTCConfig] = {
    # unit tests: a few thousand parameters
    "tiny": SpeechCTCConfig(n_mels=16, conv_channels=4, conv_kernel_time=5, conv_kernel_freq=5,
                            rnn_hidden=16, rnn_layers=1),
    "tiny-streaming": SpeechCTCConfig(n_mels=16, conv_channels=4, conv_kernel_time=5, conv_kernel_freq=5,
                                      rnn_hidden=16, rnn_layers=1, bidirectional=False,
                                      lookahead_frames=2, feature_norm="frame"),
    # bundled model: trainable on 2 CPU cores in hours; ~33 output frames per second
    "small": SpeechCTCConfig(conv_channels=32, conv_time_strides=(3, 1), rnn_hidden=256, rnn_layers=3),
    "small-streaming": SpeechCTCConfig(conv_channels=32, conv_time_strides=(3, 1), rnn_hidden=320,
                                       rnn_layers=3, bidirectional=False, lookahead_frames=4,
                                       feature_norm="frame"),
    # GPU scale (~106M parameters), DS2's 2-D conv front end + 5 bidirectional GRU layers. The width is a
    # multiple of 128: at 1100 cuBLAS/cuDNN fell back to unaligned FP16 kernels and the training step ran at
    # 106 TFLOP/s on an H200 against 241 at 1152 (bench/results/gpu/NOTES.md)
    "ds2": SpeechCTCConfig(n_mels=80, conv_channels=32, conv_time_strides=(2, 1, 1), rnn_hidden=1152,
                           rnn_layers=5),
}


def get_preset(name: str) -> SpeechCTCConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown speech preset {name!r}; choose from {sorted(PRESETS)}") from None


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate_hz: int) -> torch.Tensor:
    """HTK-style triangular mel filters, (n_fft // 2 + 1, n_mels)."""
    n_bins = n_fft // 2 + 1
    hz = torch.linspace(0, sample_rate_hz / 2, n_bins, dtype=torch.float64)
    mel_max = 2595.0 * math.log10(1.0 + (sample_rate_hz / 2) / 700.0)
    mel_pts = torch.linspace(0.0, mel_max, n_mels + 2, dtype=torch.float64)
    hz_pts = 700.0 * (10.0 ** (mel_pts / 2595.0) - 1.0)
    lower, center, upper = hz_pts[:-2, None], hz_pts[1:-1, None], hz_pts[2:, None]
    up = (hz[None, :] - lower) / (center - lower)
    down = (upper - hz[None, :]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).T.float()


def _time_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) bool, True on valid frames."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


class LogMelFeaturizer(nn.Module):
    """Raw audio (B, S) -> log-mel (B, T, F). The STFT is a strided conv with a Hann-windowed DFT basis,
    without centring, so a frame only ever sees samples of its own utterance."""

    dft: torch.Tensor  # (2 * n_bins, 1, n_fft) windowed cos/sin basis
    mel: torch.Tensor  # (n_bins, F)

    def __init__(self, cfg: SpeechCTCConfig) -> None:
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.hop_length
        n_bins = cfg.n_fft // 2 + 1
        n = torch.arange(cfg.n_fft, dtype=torch.float64)
        k = torch.arange(n_bins, dtype=torch.float64)[:, None]
        window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64)
        angle = 2 * math.pi * k * n / cfg.n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2*n_bins, n_fft)
        self.register_buffer("dft", basis.float()[:, None, :], persistent=False)
        self.register_buffer("mel", _mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate_hz),
                             persistent=False)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = F.conv1d(audio[:, None, :], self.dft, stride=self.hop)  # (B, 2*n_bins, T)
        re, im = spec.chunk(2, dim=1)
        power = (re * re + im * im).transpose(1, 2)  # (B, T, n_bins)
        logmel = torch.log(power @ self.mel + 1e-6)  # (B, T, F)
        lengths = torch.clamp(torch.div(audio_lengths - self.n_fft, self.hop, rounding_mode="floor") + 1,
                              min=0)
        return logmel, lengths


class UtteranceNorm(nn.Module):
    """Per-utterance, per-bin mean/variance normalisation over valid frames (CMVN); invariant to gain."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, :, None].to(x.dtype)  # (B, T, 1)
        count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (x * m).sum(dim=1, keepdim=True) / count
        var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + 1e-5) * m


class ConvFrontEnd(nn.Module):
    """2-D convolutions over (time, frequency) with striding; (B, T, F) -> (B, T', C * F')."""

    def __init__(self, cfg: SpeechCTCConfig) -> None:
        super().__init__()
        self.strides = cfg.conv_time_strides
        self.kt = cfg.conv_kernel_time
        layers = []
        in_ch = 1
        for s in cfg.conv_time_strides:
            layers.append(nn.Conv2d(in_ch, cfg.conv_channels, (cfg.conv_kernel_time, cfg.conv_kernel_freq),
                                    stride=(s, 2), padding=(cfg.conv_kernel_time // 2,
                                                            cfg.conv_kernel_freq // 2)))
            in_ch = cfg.conv_channels
        self.convs = nn.ModuleList(layers)
        freq = cfg.n_mels
        for _ in cfg.conv_time_strides:
            freq = (freq - 1) // 2 + 1
        self.out_dim = cfg.conv_channels * freq

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x[:, None]  # (B, 1, T, F)
        for conv, s in zip(self.convs, self.strides, strict=True):
            x = F.hardtanh(conv(x), 0.0, 20.0)  # DS2's clipped ReLU
            lengths = torch.div(lengths - 1, s, rounding_mode="floor") + 1
            x = x * _time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f), lengths


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of (B, T, D) within its own length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2]))


class RecurrentLayer(nn.Module):
    """LayerNorm -> GRU (both directions summed by concatenation when bidirectional).

    The backward GRU runs on each utterance reversed within its length, so padded frames never reach
    the valid ones: outputs match an unbatched run exactly, and the graph exports to plain ONNX GRUs.
    """

    def __init__(self, in_dim: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fwd = nn.GRU(in_dim, hidden, batch_first=True)
        self.bwd = nn.GRU(in_dim, hidden, batch_first=True) if bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        out, _ = self.fwd(x)
        if self.bwd is not None:
            rev, _ = self.bwd(reverse_padded(x, lengths))
            out = torch.cat([out, reverse_padded(rev, lengths)], dim=-1)
        return out


class Lookahead(nn.Module):
    """DS2's row convolution: out[t] = sum_{k=0..K} w_k * h[t + k] per channel (K future frames)."""

    def __init__(self, dim: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.conv = nn.Conv1d(dim, dim, frames + 1, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (0, self.frames))  # (B, D, T + K), future zeros
        return self.conv(y).transpose(1, 2)


class SpeechCTC(nn.Module):
    """forward(audio (B, S) float32 in [-1, 1], audio_lengths (B,) int64)
    -> log_probs (B, T', V) float32, out_lengths (B,) int64. Dynamic axes: B, S (and so T')."""

    def __init__(self, cfg: SpeechCTCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.featurizer = LogMelFeaturizer(cfg)
        self.feature_norm: nn.Module = (UtteranceNorm() if cfg.feature_norm == "utterance"
                                        else nn.LayerNorm(cfg.n_mels))
        self.conv = ConvFrontEnd(cfg)
        dirs = 2 if cfg.bidirectional else 1
        dims = [self.conv.out_dim] + [cfg.rnn_hidden * dirs] * cfg.rnn_layers
        self.rnns = nn.ModuleList(
            RecurrentLayer(dims[i], cfg.rnn_hidden, cfg.bidirectional) for i in range(cfg.rnn_layers))
        self.lookahead = Lookahead(dims[-1], cfg.lookahead_frames) if cfg.lookahead_frames else None
        self.out_norm = nn.LayerNorm(dims[-1])
        self.classifier = nn.Linear(dims[-1], cfg.vocab_size)

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(*self.features(audio, audio_lengths))

    def features(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel (B, T, F), zero on padded frames, and frame counts (B,). Training augments
        these (SpecAugment) before `encode`; inference goes straight through `forward`."""
        feats, lengths = self.featurizer(audio, audio_lengths)  # (B, T, F)
        mask = _time_mask(lengths, feats.shape[1])
        if isinstance(self.feature_norm, UtteranceNorm):
            return self.feature_norm(feats, mask), lengths
        return self.feature_norm(feats) * mask[:, :, None].to(feats.dtype), lengths

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, F) -> log_probs (B, T', V) float32, out_lengths (B,)."""
        x, lengths = self.conv(feats, lengths)  # (B, T', D)
        for rnn in self.rnns:
            x = rnn(x, lengths)
        if self.lookahead is not None:
            x = self.lookahead(x * _time_mask(lengths, x.shape[1])[:, :, None].to(x.dtype))
        logits = self.classifier(self.out_norm(x))
        # FP32 log-softmax even under autocast: FP16/bf16 softmax loses the small CTC probabilities.
        return F.log_softmax(logits.float(), dim=-1), lengths


def build(cfg: SpeechCTCConfig) -> SpeechCTC:
    return SpeechCTC(cfg)


def output_lengths(cfg: SpeechCTCConfig, audio_lengths: torch.Tensor) -> torch.Tensor:
    """Output frames for given sample counts, without running the model."""
    lengths = torch.clamp(torch.div(audio_lengths - cfg.n_fft, cfg.hop_length, rounding_mode="floor") + 1,
                          min=0)
    for s in cfg.conv_time_strides:
        lengths = torch.div(lengths - 1, s, rounding_mode="floor") + 1
    return lengths
