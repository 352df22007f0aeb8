"""The captioner's out-of-domain check on the serving side: read the policy from the manifest, judge each
encoded image, and give the honest fallback caption instead of decoding when it is out of domain.

The encoder graph computes the score and the ImageNet probabilities (engines/export_captioner.py); the
decision is models/caption_domain.py's `judge`, the same function `nui eval captioner` applies.

    check = DomainCheck.from_manifest(encoder.manifest)     # None for versions exported without one
    decoder_features, verdict = check.split(features)       # features: one encoder row, all outputs
    if not verdict.in_domain: captions = [fallback_caption(verdict)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.manifest import Manifest
from models.caption_domain import DomainPolicy, DomainVerdict, judge

DECODER_INPUTS = ("memory", "keys", "state")


@dataclass(frozen=True)
class DomainCheck:
    policy: DomainPolicy
    score_output: str
    probs_output: str | None

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> DomainCheck | None:
        """The version's check (None when its manifest has none); ValueError when it is malformed or names
        an output the encoder does not have."""
        spec = manifest.extras.get("domain")
        if spec is None:
            return None
        where = f"manifest of {manifest.model}: extras.domain"
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be an object")
        policy = DomainPolicy.from_dict(spec)
        encoder_outputs = {t.name for t in manifest.outputs}
        score, probs = spec.get("score_output"), spec.get("probs_output")
        if score not in encoder_outputs or (probs is not None and probs not in encoder_outputs):
            raise ValueError(f"{where} names outputs {score!r}, {probs!r}; the encoder has {sorted(encoder_outputs)}")
        if probs is not None and not policy.labels:
            raise ValueError(f"{where} has {probs!r} but no labels")
        return cls(policy, score, probs)

    def split(self, features: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], DomainVerdict]:
        """One image's encoder outputs (leading axis 1) -> (what the decoder needs, the verdict)."""
        probs = features[self.probs_output][0] if self.probs_output else None
        verdict = judge(float(features[self.score_output][0]), probs, self.policy)
        return {k: features[k] for k in DECODER_INPUTS}, verdict


def fallback_log_prob(verdict: DomainVerdict) -> float:
    """The fallback caption's log-probability: the label's under the ImageNet classifier, 0 for "a photo"."""
    return math.log(verdict.label_prob) if verdict.label else 0.0
