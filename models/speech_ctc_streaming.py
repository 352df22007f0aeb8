"""Chunk-by-chunk inference for a unidirectional (streaming) SpeechCTC: same log-probs as `forward`.

`StreamingSpeechCTC(model, chunk_frames)` wraps a trained model from outside (the model never knows)
and runs one fixed-size audio chunk per call, carrying everything the next chunk needs as state
tensors, all batch-first so a server can stack the states of many streams into one run:

    step = StreamingSpeechCTC(model, chunk_frames=4).eval()
    state = step.initial_state(batch=1)
    log_probs, frame_index, stream_frames, *state = step(chunk, stream_samples, *state)

Shapes: B streams, K = chunk_samples, N = chunk_frames output frames per call, V vocabulary.
Inputs: `audio_chunk` (B, K) float32; `stream_samples` (B,) int64, the stream's total length in
samples once its end is known, else -1. Outputs: `log_probs` (B, N, V); `frame_index` (B,), the
offline output-frame index of row 0 (negative for the first calls: the pipeline's lag); `stream_frames`
(B,), the stream's total output frames once its end is known, else -1. Rows whose index lies outside
[0, stream_frames) are padding. After the last audio chunk (zero-padded), keep calling with zero chunks
until `frame_index + N >= stream_frames` (the flush).

Why it matches the offline forward: every stage keeps just the left context its kernel needs (STFT
overlap samples, conv input frames, GRU hidden states, row-conv lookahead frames), frames before the
stream's start or past its end are zeroed exactly where the offline forward zero-pads or masks, and a
GRU step on a frame before the start leaves the hidden state untouched. The per-stage lags are chosen
so every frame a call emits depends only on samples already received, hence never changes later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from models.speech_ctc import RecurrentLayer, SpeechCTC

_UNKNOWN_END = 1 << 50  # stands in for "no end yet" in length arithmetic (far beyond any stream)


@dataclass(frozen=True)
class StateSpec:
    name: str  # input name; the updated state is output `<name>_out`
    shape: tuple[int, ...]  # without the leading batch axis
    dtype: torch.dtype


def _conv_context(start: int, kernel: int, stride: int) -> int:
    """Left-context frames C for a stride-s conv fed N (a multiple of s) new frames per call: C in
    [k - s, k - 1] gives exactly N / s outputs, and (start - C + k // 2) % s == 0 keeps them on the offline
    output grid (output u is centred on input s * u)."""
    for c in range(kernel - stride, kernel):
        if c >= 0 and (start - c + kernel // 2) % stride == 0:
            return c
    raise ValueError(f"no left context aligns a kernel of {kernel} with stride {stride}")


def _conv_lengths(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    # ceil(len / s) without dividing negatives (ONNX integer Div truncates; torch floors)
    return torch.where(lengths > 0, torch.div(lengths - 1, stride, rounding_mode="floor") + 1,
                       torch.zeros_like(lengths))


class StreamingSpeechCTC(nn.Module):
    """One chunk per call over a unidirectional SpeechCTC; see the module docstring for the contract."""

    def __init__(self, model: SpeechCTC, chunk_frames: int) -> None:
        super().__init__()
        cfg = model.cfg
        if cfg.bidirectional:
            raise ValueError("streaming needs a unidirectional model (bidirectional=False)")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.model = model
        self.chunk_frames = chunk_frames
        self.hop = cfg.hop_length
        self.n_fft = cfg.n_fft
        self.chunk_feats = chunk_frames * cfg.time_stride  # STFT frames per call
        self.chunk_samples = self.chunk_feats * cfg.hop_length
        # Overlap samples kept between calls: enough for the next window, rounded to whole hops so the
        # frames stay on the offline grid (frame t starts at sample t * hop).
        self.tail = math.ceil((cfg.n_fft - cfg.hop_length) / cfg.hop_length) * cfg.hop_length
        start = -(self.tail // cfg.hop_length)  # index of the first STFT frame of call 0
        self.feat_start = start
        self.conv_ctx: list[int] = []
        self.conv_start: list[int] = []  # index of each conv's first output frame of call 0
        for s in cfg.conv_time_strides:
            c = _conv_context(start, cfg.conv_kernel_time, s)
            start = (start - c + cfg.conv_kernel_time // 2) // s
            self.conv_ctx.append(c)
            self.conv_start.append(start)
        self.lookahead = cfg.lookahead_frames
        self.out_start = start - self.lookahead

    @property
    def lag_frames(self) -> int:
        """Output frames by which the emitted rows trail the audio received (the pipeline's lag)."""
        return -self.out_start

    def state_specs(self) -> list[StateSpec]:
        cfg = self.model.cfg
        specs = [StateSpec("audio_tail", (self.tail,), torch.float32)]
        ch, freq = 1, cfg.n_mels
        for j, c in enumerate(self.conv_ctx):
            specs.append(StateSpec(f"conv{j}_context", (ch, c, freq), torch.float32))
            ch, freq = cfg.conv_channels, (freq - 1) // 2 + 1
        specs.append(StateSpec("rnn_hidden", (cfg.rnn_layers, cfg.rnn_hidden), torch.float32))
        if self.lookahead:
            specs.append(StateSpec("lookahead_context", (self.lookahead, cfg.rnn_hidden), torch.float32))
        specs.append(StateSpec("samples_seen", (), torch.int64))
        return specs

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros((batch, *s.shape), dtype=s.dtype) for s in self.state_specs()]

    def forward(self, audio_chunk: torch.Tensor, stream_samples: torch.Tensor,
                *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, cfg = self.model, self.model.cfg
        audio_tail, *conv_state = state[: 1 + len(self.conv_ctx)]
        rest = state[1 + len(self.conv_ctx):]
        rnn_hidden = rest[0]  # (B, L, H)
        lookahead_ctx = rest[1] if self.lookahead else None
        samples_seen = rest[-1]  # (B,)
        call = torch.div(samples_seen, self.chunk_samples, rounding_mode="floor")  # (B,) calls done
        ended = stream_samples >= 0
        total = torch.where(ended, stream_samples, torch.full_like(stream_samples, _UNKNOWN_END))

        # STFT + log-mel over the kept overlap and the new chunk: exactly chunk_feats frames.
        buf = torch.cat([audio_tail, audio_chunk], dim=1)  # (B, tail + K)
        new_state: list[torch.Tensor] = [buf[:, buf.shape[1] - self.tail:]]
        spec = F.conv1d(buf[:, None, :], m.featurizer.dft, stride=self.hop)
        re, im = spec.chunk(2, dim=1)
        feats = torch.log((re * re + im * im).transpose(1, 2) @ m.featurizer.mel + 1e-6)  # (B, n, F)
        lengths = torch.where(total >= self.n_fft,
                              torch.div(total - self.n_fft, self.hop, rounding_mode="floor") + 1,
                              torch.zeros_like(total))
        index = call[:, None] * self.chunk_feats + self.feat_start + torch.arange(self.chunk_feats)[None, :]
        mask = (index >= 0) & (index < lengths[:, None])  # (B, n)
        x = m.feature_norm(feats) * mask[:, :, None].to(feats.dtype)

        # Conv front end: valid (unpadded) convolutions in time over kept context + new frames.
        y = x[:, None]  # (B, ch, n, F)
        n = self.chunk_feats
        convs = [cast(nn.Conv2d, c) for c in m.conv.convs]
        for j, (conv, s) in enumerate(zip(convs, cfg.conv_time_strides, strict=True)):
            buf = torch.cat([conv_state[j], y], dim=2)
            new_state.append(buf[:, :, buf.shape[2] - self.conv_ctx[j]:])
            y = F.hardtanh(F.conv2d(buf, conv.weight, conv.bias, stride=(s, 2),
                                    padding=(0, cfg.conv_kernel_freq // 2)), 0.0, 20.0)
            n //= s
            lengths = _conv_lengths(lengths, s)
            index = call[:, None] * n + self.conv_start[j] + torch.arange(n)[None, :]
            mask = (index >= 0) & (index < lengths[:, None])
            y = y * mask[:, None, :, None].to(y.dtype)
        b, c, t, f = y.shape
        x = y.permute(0, 2, 1, 3).reshape(b, t, c * f)  # (B, N, D)

        # GRUs step by step; a frame before the stream's start leaves the hidden state as it was.
        started = (index >= 0)[:, :, None]  # (B, N, 1)
        hiddens = []
        for layer, module in enumerate(m.rnns):
            rnn = cast(RecurrentLayer, module)
            w_ih, b_ih, w_hh, b_hh = (cast(torch.Tensor, getattr(rnn.fwd, name)) for name in
                                      ("weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "bias_hh_l0"))
            h = rnn_hidden[:, layer]  # (B, H)
            gates_x = F.linear(rnn.norm(x), w_ih, b_ih)  # (B, N, 3H)
            outs = []
            for step in range(t):
                xr, xz, xn = gates_x[:, step].chunk(3, dim=-1)
                hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                h_new = (1 - z) * torch.tanh(xn + r * hn) + z * h
                h = torch.where(started[:, step], h_new, h)
                outs.append(h)
            hiddens.append(h)
            x = torch.stack(outs, dim=1)  # (B, N, H)
        new_state.append(torch.stack(hiddens, dim=1))
        x = x * mask[:, :, None].to(x.dtype)

        # Row convolution over kept future frames: row i is the output for rnn frame (first kept + i).
        if m.lookahead is not None and lookahead_ctx is not None:
            buf = torch.cat([lookahead_ctx, x], dim=1)  # (B, lookahead + N, H)
            new_state.append(buf[:, buf.shape[1] - self.lookahead:])
            x = m.lookahead.conv(buf.transpose(1, 2)).transpose(1, 2)
        logits = m.classifier(m.out_norm(x))
        new_state.append(samples_seen + self.chunk_samples)
        frame_index = call * self.chunk_frames + self.out_start
        stream_frames = torch.where(ended, lengths, torch.full_like(lengths, -1))
        return (F.log_softmax(logits.float(), dim=-1), frame_index, stream_frames, *new_state)


def stream_log_probs(step: StreamingSpeechCTC, audio: torch.Tensor) -> torch.Tensor:
    """Run one clip (S,) chunk by chunk, end and flush included: the valid log-probs (T', V), to compare
    with the offline forward."""
    k, total = step.chunk_samples, audio.shape[0]
    state = step.initial_state(1)
    rows: list[torch.Tensor] = []
    offset = 0
    while True:
        chunk = torch.zeros(1, k)
        piece = audio[offset: offset + k]
        chunk[0, : piece.shape[0]] = piece
        offset += k
        known = torch.tensor([total if offset >= total else -1])
        log_probs, frame_index, stream_frames, *state = step(chunk, known, *state)
        first, end = int(frame_index[0]), int(stream_frames[0])
        lo, hi = max(0, -first), step.chunk_frames if end < 0 else min(step.chunk_frames, end - first)
        if hi > lo:
            rows.append(log_probs[0, lo:hi])
        if end >= 0 and first + step.chunk_frames >= end:
            break
    return torch.cat(rows) if rows else torch.zeros(0, step.model.cfg.vocab_size)
