"""The out-of-domain check inside the captioner's encoder graph: extra outputs equal the numpy reference,
the parity gate covers them, FP16 weight storage keeps the statistics FP32, the manifest records the policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from engines.engine import load_engine
from engines.export_captioner import DOMAIN_FP32_PREFIX, export_captioner, pooled_features
from models.caption_domain import DomainPolicy, domain_scores, judge
from models.caption_image import to_pixels
from models.caption_text import CaptionTokenizer
from models.captioner import Captioner
from tests.captioner_tiny import CAPTIONS, picture, tiny_domain_head


def _images(seeds: range) -> np.ndarray:
    return np.stack([to_pixels(Image.fromarray(picture(k, seed=s)), 32) for s in seeds for k in CAPTIONS])


def _odd_images(n: int) -> np.ndarray:
    """Green and grey noise: nothing like the red and blue training pictures."""
    rng = np.random.default_rng(7)
    green = np.clip(np.array([0.1, 0.8, 0.1])[:, None, None] + rng.normal(0, 0.1, (n, 3, 32, 32)), 0, 1)
    return green.astype(np.float32)


@pytest.mark.parametrize("weights_dtype", ["float32", "float16"])
def test_domain_outputs_match_the_numpy_reference(tmp_path: Path, tiny_captioner: tuple[Captioner, CaptionTokenizer],
                                                  weights_dtype: str) -> None:
    model, tokenizer = tiny_captioner
    head = tiny_domain_head(model)
    path, manifest = export_captioner(model, tokenizer.to_str(), tmp_path / "repo", dev_images=_images(range(500, 502)),
                                      weights_dtype=weights_dtype, domain=head)
    assert [t.name for t in manifest.outputs] == ["memory", "keys", "state", "domain_score", "label_probs"]
    spec = manifest.extras["domain"]
    assert spec["score_output"] == "domain_score" and spec["probs_output"] == "label_probs"
    assert DomainPolicy.from_dict(spec) == head.policy and spec["labels"] == ["ostrich", "tench", "goldfish"]
    assert spec["fit"]["train_images"] == 120 and spec["fit"]["dev_images"] == 40 and spec["fit"]["components"] == 8
    assert head.stats.l2_normalize and spec["fit"]["l2_normalize"]  # the graph scores unit-length features
    parity = manifest.parity
    assert parity["passed"] and parity["verdict_flips"] == 0
    assert parity["max_domain_score_rel_diff"] <= parity["atol"] and parity["max_label_prob_diff"] <= parity["atol"]

    images = np.concatenate([_images(range(600, 604)), _odd_images(4)])
    out = load_engine(tmp_path / "repo", "captioner", graph="encoder").run({"images": images})
    want = domain_scores(pooled_features(model, [images]), head.stats)
    np.testing.assert_allclose(out["domain_score"], want, rtol=1e-3 if weights_dtype == "float32" else 2e-2)
    np.testing.assert_allclose(out["label_probs"], np.tile(torch.softmax(torch.tensor([5.0, 0, 0]), 0).numpy(),
                                                           (len(images), 1)), atol=1e-5)
    verdicts = [judge(float(s), p, head.policy) for s, p in zip(out["domain_score"], out["label_probs"], strict=True)]
    inside = [v.in_domain for v in verdicts]
    assert sum(inside[:8]) >= 7 and not any(inside[8:])  # a fresh training-like picture may sit in the 1 % tail
    assert max(out["domain_score"][:8]) < min(out["domain_score"][8:])
    assert {v.caption for v in verdicts[8:]} == {"a photo of an ostrich"}
    if weights_dtype == "float16":  # the statistics stay FP32, the rest is stored as FP16
        stored = {i.name: i.data_type for i in onnx.load(str(path / "encoder.onnx")).graph.initializer}
        assert {n for n in stored if n.startswith(DOMAIN_FP32_PREFIX)} == {
            "domain_mean", "domain_components", "domain_inv_var"}
        assert all(stored[n] == onnx.TensorProto.FLOAT for n in stored if n.startswith(DOMAIN_FP32_PREFIX))


def test_without_a_classifier_only_the_score_is_added(tmp_path: Path,
                                                      tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> None:
    model, tokenizer = tiny_captioner
    head = tiny_domain_head(model, label_bias=None)
    assert head.classifier is None and head.policy.labels == ()  # a random tiny encoder has no ImageNet head
    assert 0.0 <= head.fit["dev_flagged"] <= 0.05 and head.fit["train_flagged"] <= 0.05
    _, manifest = export_captioner(model, tokenizer.to_str(), tmp_path / "repo", weights_dtype="float32",
                                   domain=head)
    assert [t.name for t in manifest.outputs][3:] == ["domain_score"]
    assert manifest.extras["domain"]["probs_output"] is None and manifest.parity["passed"]
