"""Export the captioner as two ONNX graphs, gate them on parity with torch, publish them with the tokenizer.

    nui export captioner --checkpoint runs/captioner_small --repo model_repository --dev-images data/captions/images/val

Graphs (dynamic batch; the image side is fixed by the config, the server resizes to it):
  encoder.onnx       images float32 [batch, 3, H, W] RGB in [0, 1]
                     -> memory [batch, N, D], keys [batch, N, A], state [batch, S]
  decoder_step.onnx  tokens int64 [batch], state [batch, S], memory [batch, N, D], keys [batch, N, A]
                     -> log_probs float32 [batch, V], state_out [batch, S]
With a `DomainHead` (the out-of-domain check, models/caption_domain.py) the encoder also gives
  domain_score [batch]         RMS Mahalanobis distance of the (L2-normalised) pooled features to the
                               training scenes'
  label_probs [batch, 1000]    the pretrained encoder's own ImageNet classifier (frozen encoders only)
and the manifest's `extras["domain"]` records the threshold (a quantile of the dev split's scores), the
fallback policy, the ImageNet class names and how the statistics were fitted.
The decoder step takes and returns its state (the GRU hidden state); memory and keys ride along per
row, so beams of different images can share a step batch. `manifest.json` lists both graphs under
`extras["graphs"]` (engines/engine.py `graph_specs`), the special token ids under `extras["tokens"]`,
and `tokenizer.json` is copied into the version folder and checksummed like the graphs.

With `weights_dtype="float16"` (the default) weights are stored as FP16 (engines/onnx_weights.py).

Parity gate (nothing is published when it fails): on the dev images (or seeded synthetic ones), ONNX
Runtime's encoder outputs (the domain score relative to its size) are within `atol` of torch's, its step
log-probs are within `atol` along torch's greedy path, and greedy captions are identical — except where
the two paths part at a near tie (torch's two candidates within 2 * atol of each other), counted apart as
tie swaps. Verdicts that differ (a score within rounding of the threshold) are counted, not gated.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

from engines.export_speech import ParityError
from engines.manifest import Manifest, TensorSpec, file_digests, staged_version, write_manifest
from engines.onnx_weights import weights_to_fp16
from models.caption_beam import StepFn, greedy_search
from models.caption_domain import (
    NORM_EPS,
    DomainPolicy,
    DomainStats,
    dev_threshold,
    domain_scores,
    fit_domain,
    judge,
)
from models.caption_text import BOS, EOS, PAD, UNK, CaptionTokenizer
from models.captioner import Captioner, CaptionerConfig, imagenet_labels, load_imagenet_classifier

logger = logging.getLogger(__name__)

TASK = "captioner"
OPSET = 17
ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE = "encoder.onnx", "decoder_step.onnx", "tokenizer.json"
# on features and log-probs; measured on the tiny test model ~1e-6 (fp32) and ~3e-3 (fp16 weights)
DEFAULT_ATOL = {"float32": 1e-4, "float16": 5e-2}
BANNED_IDS = (PAD, BOS, UNK)  # never generated: a caption is words and EOS

DOMAIN_OUTPUTS = ("domain_score", "label_probs")
DOMAIN_FP32_PREFIX = "domain_"  # initializers kept FP32: the PPCA residual subtracts two large sums

__all__ = ["DEFAULT_ATOL", "DomainHead", "ParityError", "ParityReport", "build_domain_head", "export_captioner",
           "graph_specs", "pooled_features", "synthetic_images"]


@dataclass(frozen=True)
class DomainHead:
    """The out-of-domain check built into the encoder graph: PPCA statistics of the training split's pooled
    features, the policy (dev-quantile threshold, ImageNet labels), the ImageNet classifier (weight (K, C),
    bias (K,)) or None, and the fit's figures for the manifest."""

    stats: DomainStats
    policy: DomainPolicy
    classifier: tuple[torch.Tensor, torch.Tensor] | None
    fit: dict[str, Any]


def graph_specs(cfg: CaptionerConfig, domain: DomainHead | None = None) -> dict[str, dict[str, Any]]:
    """{graph: {"file", "inputs", "outputs"}} with TensorSpecs, as the manifest lists them."""
    side, n = cfg.image_size_px, cfg.grid_positions
    memory = TensorSpec("memory", "float32", ["batch", n, cfg.memory_dim])
    keys = TensorSpec("keys", "float32", ["batch", n, cfg.attention_dim])
    state = TensorSpec("state", "float32", ["batch", cfg.hidden_size])
    extra = []
    if domain is not None:
        extra.append(TensorSpec("domain_score", "float32", ["batch"]))
        if domain.classifier is not None:
            extra.append(TensorSpec("label_probs", "float32", ["batch", int(domain.classifier[0].shape[0])]))
    return {
        "encoder": {"file": ENCODER_FILE, "inputs": [TensorSpec("images", "float32", ["batch", 3, side, side])],
                    "outputs": [memory, keys, state, *extra]},
        "decoder_step": {"file": DECODER_FILE,
                         "inputs": [TensorSpec("tokens", "int64", ["batch"]), state, memory, keys],
                         "outputs": [TensorSpec("log_probs", "float32", ["batch", cfg.vocab_size]),
                                     TensorSpec("state_out", "float32", ["batch", cfg.hidden_size])]},
    }


class _Encoder(nn.Module):
    """images -> memory, keys, state (+ domain_score, + label_probs with a DomainHead)."""

    domain_mean: torch.Tensor
    domain_components: torch.Tensor
    domain_inv_var: torch.Tensor
    classifier_weight_t: torch.Tensor
    classifier_bias: torch.Tensor

    def __init__(self, model: Captioner, domain: DomainHead | None = None) -> None:
        super().__init__()
        self.model = model
        self.has_domain = domain is not None
        self.has_classifier = domain is not None and domain.classifier is not None
        self.l2_normalize = False
        if domain is not None:
            st = domain.stats
            self.register_buffer("domain_mean", torch.from_numpy(st.mean).float())
            self.register_buffer("domain_components", torch.from_numpy(st.components).float())  # (K, C)
            self.register_buffer("domain_inv_var", torch.from_numpy(1.0 / st.variances).float())
            self.inv_residual_var, self.dim = 1.0 / st.residual_variance, float(st.dim)
            self.l2_normalize = st.l2_normalize
        if domain is not None and domain.classifier is not None:
            self.register_buffer("classifier_weight_t", domain.classifier[0].t().contiguous())  # (C, K)
            self.register_buffer("classifier_bias", domain.classifier[1].clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature_map = self.model.encoder(images)  # (B, C, h, w)
        out = self.model.encode_feature_map(feature_map)
        if not self.has_domain:
            return out
        pooled = feature_map.mean(dim=(2, 3))  # (B, C): what the ImageNet classifier reads
        x = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS) if self.l2_normalize else pooled
        d = x - self.domain_mean
        proj = F.linear(d, self.domain_components)  # (B, K); Gemm with transB: the (K, C) tensor is stored once
        # what lies off the K directions, as a vector: |d|^2 - |proj|^2 would cancel catastrophically in FP32
        off = d - proj @ self.domain_components  # (B, C)
        d2 = (proj * proj * self.domain_inv_var).sum(-1) + (off * off).sum(-1) * self.inv_residual_var
        extra = [torch.sqrt(d2 / self.dim)]
        if self.has_classifier:
            extra.append(torch.softmax(pooled @ self.classifier_weight_t + self.classifier_bias, dim=-1))
        return (*out, *extra)


@torch.no_grad()
def pooled_features(model: Captioner, batches: Iterable[np.ndarray]) -> np.ndarray:
    """(N, C) global-average-pooled encoder features of image batches ((b, 3, H, W) float32 in [0, 1])."""
    model = model.eval().float().cpu()
    out = [model.encoder(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))).mean(dim=(2, 3)).numpy()
           for b in batches]
    return np.concatenate(out).astype(np.float32)


def build_domain_head(model: Captioner, train_features: np.ndarray, dev_features: np.ndarray, *,
                      quantile: float = 0.99, components: int = 256, label_threshold: float | None = None,
                      l2_normalize: bool = True) -> DomainHead:
    """Fit the PPCA statistics on training features (L2-normalised by default, models/caption_domain.py),
    set the threshold at `quantile` of the dev features' scores; the ImageNet classifier joins when the
    encoder is the frozen pretrained one (a fine-tuned or random encoder's features no longer match it)."""
    stats = fit_domain(train_features, components, l2_normalize)
    dev_scores = domain_scores(dev_features, stats)
    threshold = dev_threshold(dev_scores, quantile)
    classifier: tuple[torch.Tensor, torch.Tensor] | None = None
    labels: tuple[str, ...] = ()
    if model.cfg.encoder == "efficientnet_lite0" and model.cfg.freeze_encoder:
        classifier, labels = load_imagenet_classifier(), tuple(imagenet_labels())
    policy = DomainPolicy(threshold, labels=labels) if label_threshold is None else \
        DomainPolicy(threshold, label_threshold, labels)
    train_scores = domain_scores(train_features, stats)
    fit = {"train_images": len(train_features), "dev_images": len(dev_features), "quantile": quantile,
           "components": int(stats.components.shape[0]), "feature_dim": stats.dim, "l2_normalize": l2_normalize,
           "train_flagged": float(np.mean(train_scores > threshold)),
           "dev_flagged": float(np.mean(dev_scores > threshold)),
           "dev_score_median": float(np.median(dev_scores)), "dev_score_max": float(dev_scores.max())}
    logger.info("domain check: %d train / %d dev images, %d components, threshold %.3f (dev q%.3g), "
                "flagged: train %.2f%%, dev %.2f%%", fit["train_images"], fit["dev_images"], fit["components"],
                threshold, quantile, 100 * fit["train_flagged"], 100 * fit["dev_flagged"])
    return DomainHead(stats, policy, classifier, fit)


class _DecoderStep(nn.Module):
    def __init__(self, model: Captioner) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, state: torch.Tensor, memory: torch.Tensor,
                keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_step(tokens, state, memory, keys)


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], spec: dict[str, Any], path: Path) -> None:
    names = [t.name for t in spec["inputs"]], [t.name for t in spec["outputs"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices
        torch.onnx.export(module, example, str(path), opset_version=OPSET, dynamo=False,
                          input_names=names[0], output_names=names[1],
                          dynamic_axes={name: {0: "batch"} for name in names[0] + names[1]})


def export_onnx(model: Captioner, folder: Path, weights_dtype: str = "float16", domain: DomainHead | None = None
                ) -> None:
    """Write encoder.onnx and decoder_step.onnx into `folder`."""
    if weights_dtype not in DEFAULT_ATOL:
        raise ValueError(f"weights_dtype must be one of {sorted(DEFAULT_ATOL)}, got {weights_dtype!r}")
    model = model.eval().float().cpu()
    specs = graph_specs(model.cfg, domain)
    images = torch.rand(2, 3, model.cfg.image_size_px, model.cfg.image_size_px,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        memory, keys, state = model.encode(images)
    _export(_Encoder(model, domain).eval(), (images,), specs["encoder"], folder / ENCODER_FILE)
    _export(_DecoderStep(model).eval(), (torch.tensor([BOS, 5]), state, memory, keys), specs["decoder_step"],
            folder / DECODER_FILE)
    if weights_dtype == "float16":
        for name in (ENCODER_FILE, DECODER_FILE):
            weights_to_fp16(folder / name, keep_fp32_prefix=DOMAIN_FP32_PREFIX)


def synthetic_images(n: int, size_px: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32 in [0, 1]: seeded smooth colour fields with a few rectangles, for a
    parity check when no dev images are given (white noise would exercise the encoder unrealistically)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size_px, size_px), dtype=np.float32)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / max(1, size_px - 1)
    for i in range(n):
        for c in range(3):
            a, b, d = rng.uniform(-1, 1, 3)
            out[i, c] = 0.5 + 0.25 * np.sin(3 * a * xx + 3 * b * yy + 6 * d)
        for _ in range(3):
            x0, y0 = rng.integers(0, size_px, 2)
            w, h = rng.integers(size_px // 8 + 1, size_px // 2 + 2, 2)
            out[i, :, y0:y0 + h, x0:x0 + w] = rng.uniform(0, 1, (3, 1, 1))
    return out


@dataclass
class ParityReport:
    images: int
    max_feature_diff: float  # encoder outputs
    max_log_prob_diff: float  # decoder step along torch's greedy path
    atol: float
    captions_equal: int
    tie_swaps: int  # greedy paths that part only at a near tie of torch's log-probs
    mismatches: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (torch, onnx) token ids
    # with a domain head: |diff| / max(1, torch score), |diff| of the ImageNet probabilities, and images whose
    # in/out-of-domain verdict or fallback caption differs (a score within rounding of the threshold)
    max_domain_score_rel_diff: float = 0.0
    max_label_prob_diff: float = 0.0
    verdict_flips: int = 0

    @property
    def passed(self) -> bool:
        return max(self.max_feature_diff, self.max_log_prob_diff, self.max_domain_score_rel_diff,
                   self.max_label_prob_diff) <= self.atol and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "max_feature_diff": self.max_feature_diff,
                "max_log_prob_diff": self.max_log_prob_diff, "atol": self.atol,
                "captions_equal": self.captions_equal, "tie_swaps": self.tie_swaps,
                "max_domain_score_rel_diff": self.max_domain_score_rel_diff,
                "max_label_prob_diff": self.max_label_prob_diff, "verdict_flips": self.verdict_flips,
                "passed": self.passed}


def _torch_step(model: Captioner) -> StepFn:
    def step(tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.no_grad():
            lp, new = model.decode_step(torch.from_numpy(tokens), torch.from_numpy(state["state"]),
                                        torch.from_numpy(state["memory"]), torch.from_numpy(state["keys"]))
        return lp.numpy(), {**state, "state": new.numpy()}
    return step


def _onnx_step(session: ort.InferenceSession) -> StepFn:
    def step(tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        lp, new = session.run(None, {"tokens": tokens, **state})
        return lp, {**state, "state": new}
    return step


def check_parity(model: Captioner, folder: Path, images: np.ndarray, atol: float, batch_size: int = 8,
                 domain: DomainHead | None = None) -> ParityReport:
    """Torch vs ONNX Runtime on `images` (N, 3, H, W): features (and domain outputs), step log-probs,
    greedy captions."""
    model = model.eval().float().cpu()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    encoder = ort.InferenceSession(str(folder / ENCODER_FILE), opts, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(folder / DECODER_FILE), opts, providers=["CPUExecutionProvider"])
    report = ParityReport(images=0, max_feature_diff=0.0, max_log_prob_diff=0.0, atol=atol, captions_equal=0,
                          tie_swaps=0)
    max_length = model.cfg.max_len - 1  # BOS is given, not generated
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        with torch.no_grad():
            t_out = [x.numpy() for x in _Encoder(model, domain).eval()(torch.from_numpy(batch))]
        o_out = encoder.run(None, {"images": batch})
        if len(t_out) != len(o_out):
            raise ParityError(f"the encoder graph has {len(o_out)} outputs, torch {len(t_out)}")
        for a, b in zip(t_out[:3], o_out[:3], strict=True):
            report.max_feature_diff = max(report.max_feature_diff, float(np.abs(a - b).max()))
        if domain is not None:
            _domain_parity(report, t_out[3:], o_out[3:], domain.policy)
        t_state = dict(zip(("memory", "keys", "state"), t_out[:3], strict=True))
        o_state = dict(zip(("memory", "keys", "state"), o_out[:3], strict=True))
        n = len(batch)
        t_hyps = greedy_search(_torch_step(model), t_state, n, BOS, EOS, max_length, BANNED_IDS)
        o_hyps = greedy_search(_onnx_step(decoder), o_state, n, BOS, EOS, max_length, BANNED_IDS)
        for i, (th, oh) in enumerate(zip(t_hyps, o_hyps, strict=True)):
            row = {k: v[i:i + 1] for k, v in t_state.items()}
            t_lps, o_lps = _path_log_probs(model, decoder, row, th.tokens)
            report.max_log_prob_diff = max(report.max_log_prob_diff, float(np.abs(t_lps - o_lps).max()))
            if th.tokens == oh.tokens:
                report.captions_equal += 1
            elif _near_tie(t_lps, th.tokens, oh.tokens, 2 * atol):
                report.tie_swaps += 1
            else:
                report.mismatches.append((th.tokens, oh.tokens))
        report.images += n
    return report


def _domain_parity(report: ParityReport, t_out: list[np.ndarray], o_out: list[np.ndarray],
                   policy: DomainPolicy) -> None:
    t_score, o_score = t_out[0], o_out[0]
    rel = np.abs(t_score - o_score) / np.maximum(1.0, np.abs(t_score))
    report.max_domain_score_rel_diff = max(report.max_domain_score_rel_diff, float(rel.max()))
    t_probs, o_probs = (t_out[1], o_out[1]) if len(t_out) > 1 else (None, None)
    if t_probs is not None and o_probs is not None:
        report.max_label_prob_diff = max(report.max_label_prob_diff, float(np.abs(t_probs - o_probs).max()))
    for i in range(len(t_score)):
        a = judge(float(t_score[i]), None if t_probs is None else t_probs[i], policy)
        b = judge(float(o_score[i]), None if o_probs is None else o_probs[i], policy)
        report.verdict_flips += (a.in_domain, a.caption) != (b.in_domain, b.caption)


def _path_log_probs(model: Captioner, decoder: ort.InferenceSession, state: dict[str, np.ndarray],
                    tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Both steps' log-probs (T, V) teacher-forced along `tokens`, each carrying its own state, from the
    same (torch) features: the decoder graph's error, as it accumulates over a caption."""
    inputs = [BOS, *tokens]
    t_step, o_step = _torch_step(model), _onnx_step(decoder)
    t_state, o_state = state, state
    t_rows, o_rows = [], []
    for tok in inputs:
        token = np.array([tok], dtype=np.int64)
        t_lp, t_state = t_step(token, t_state)
        o_lp, o_state = o_step(token, o_state)
        t_rows.append(t_lp[0])
        o_rows.append(o_lp[0])
    return np.stack(t_rows), np.stack(o_rows)


def _near_tie(log_probs: np.ndarray, a: list[int], b: list[int], tol: float) -> bool:
    """The two token paths first differ where torch scores both choices within `tol`."""
    for t, (x, y) in enumerate(zip([*a, EOS], [*b, EOS], strict=False)):
        if x != y:
            return t < len(log_probs) and abs(float(log_probs[t, x] - log_probs[t, y])) <= tol
    return False


def export_captioner(model: Captioner, tokenizer_json: str, repo: Path, model_name: str = "captioner",
                     version: int | None = None, *, dev_images: np.ndarray | None = None,
                     weights_dtype: str = "float16", atol: float | None = None,
                     source_checkpoint_sha256: str = "", extras: dict[str, Any] | None = None,
                     domain: DomainHead | None = None) -> tuple[Path, Manifest]:
    """Export, gate and publish `model` + its tokenizer as `<repo>/<model_name>/<version>/` (default: next).

    dev_images: (N, 3, H, W) float32 in [0, 1] at the model's image size (models/caption_image.py
    `to_pixels`); seeded synthetic images when None. Raises ParityError (publishing nothing) when the
    gate fails, ValueError on a wrong image size or a tokenizer that does not match the model.
    domain: the out-of-domain check to build into the encoder graph (`build_domain_head`); None: none.
    """
    cfg = model.cfg
    atol = atol if atol is not None else DEFAULT_ATOL.get(weights_dtype, 0.0)
    vocab_size = CaptionTokenizer.from_str(tokenizer_json).vocab_size
    if vocab_size != cfg.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens, the model's vocabulary is {cfg.vocab_size}")
    if dev_images is not None and dev_images.shape[1:] != (3, cfg.image_size_px, cfg.image_size_px):
        raise ValueError(f"dev images are {dev_images.shape[1:]}, the model takes (3, {cfg.image_size_px}, "
                         f"{cfg.image_size_px})")
    with staged_version(repo, model_name, version) as (tmp, final):
        export_onnx(model, tmp, weights_dtype, domain)
        images = dev_images if dev_images is not None else synthetic_images(8, cfg.image_size_px)
        report = check_parity(model, tmp, images, atol, domain=domain)
        logger.info("parity: %d images, max |diff| features %.2e, step log-probs %.2e (atol %.0e), greedy "
                    "captions equal %d, near-tie swaps %d", report.images, report.max_feature_diff,
                    report.max_log_prob_diff, atol, report.captions_equal, report.tie_swaps)
        if not report.passed:
            raise ParityError(f"parity gate failed: max |diff| features {report.max_feature_diff:.3e}, log-probs "
                              f"{report.max_log_prob_diff:.3e} (atol {atol:.0e}), {len(report.mismatches)} "
                              f"different greedy captions, e.g. {report.mismatches[:2]}")
        (tmp / TOKENIZER_FILE).write_text(tokenizer_json)
        specs = graph_specs(cfg, domain)
        if domain is not None:
            extras = {**(extras or {}), "domain": {
                "score_output": "domain_score",
                "probs_output": "label_probs" if domain.classifier is not None else None,
                **domain.policy.to_dict(), "fit": domain.fit}}
        manifest = Manifest(
            model=model_name, task=TASK, config=cfg.to_dict(), inputs=specs["encoder"]["inputs"],
            outputs=specs["encoder"]["outputs"], files=file_digests(tmp), engine="onnxruntime",
            precision="fp16-weights" if weights_dtype == "float16" else "fp32", opset=OPSET,
            source_checkpoint_sha256=source_checkpoint_sha256,
            parity={**report.to_dict(), "dev_data": dev_images is not None},
            extras={"graphs": {name: {"file": g["file"], "inputs": [t.__dict__ for t in g["inputs"]],
                                      "outputs": [t.__dict__ for t in g["outputs"]]} for name, g in specs.items()},
                    "tokenizer": TOKENIZER_FILE,
                    "tokens": {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK},
                    "size_bytes": sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()),
                    **(extras or {})},
        )
        write_manifest(tmp, manifest)
    return final, manifest
