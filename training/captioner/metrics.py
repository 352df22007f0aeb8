"""Greedy caption decoding in torch (training's per-epoch check) and COCO metrics: BLEU-4 and CIDEr-D.

Scores come from `pycocoevalcap` (the COCO caption evaluation code): BLEU (Papineni et al. 2002) and
CIDEr (Vedantam et al. 2015, with its IDF computed over the evaluated set's references, as the COCO
server does). Captions are compared after `normalize_caption`, which stands in for the PTB tokenizer
(that one needs Java): lower-case words without punctuation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from models.caption_text import BOS, EOS, normalize_caption
from models.captioner import Captioner


@torch.no_grad()
def greedy_decode(model: Captioner, inputs: torch.Tensor, max_len: int) -> list[list[int]]:
    """Token ids (BOS excluded, up to and including EOS) of the most likely next word at every step.
    inputs: images (B, 3, H, W), or cached encoder features for a `feature_view` of the model."""
    memory, keys, state = model.encode(inputs)
    tokens = torch.full((inputs.shape[0],), BOS, dtype=torch.long, device=inputs.device)
    steps, done = [], torch.zeros_like(tokens, dtype=torch.bool)
    for _ in range(max_len - 1):
        log_probs, state = model.decode_step(tokens, state, memory, keys)
        tokens = log_probs.argmax(dim=-1)
        steps.append(tokens)
        done |= tokens == EOS
        if bool(done.all()):
            break
    out = torch.stack(steps, dim=1).cpu().tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in out]


def caption_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """{"bleu1".."bleu4", "cider", "n"} of one hypothesis per image against its references."""
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"need one hypothesis per image, got {len(hypotheses)} for {len(references)} images")
    gts = {i: [normalize_caption(r) for r in refs] for i, refs in enumerate(references)}
    # an empty hypothesis scores 0; pycocoevalcap needs at least one token to count
    res = {i: [normalize_caption(h) or "[empty]"] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu1": float(bleu[0]), "bleu2": float(bleu[1]), "bleu3": float(bleu[2]), "bleu4": float(bleu[3]),
            "cider": float(cider), "n": float(len(hypotheses))}
