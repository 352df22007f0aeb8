"""The served captioner's out-of-domain check: in-domain pictures are decoded, others get the honest
fallback caption without decoding, the response says which (ONNX engines of the tiny captioner)."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.export_captioner import export_captioner
from engines.manifest import read_manifest
from models.caption_text import CaptionTokenizer
from models.captioner import Captioner
from proto import caption_pb2
from server.caption_domain import DomainCheck
from server.caption_service import request_options, to_response
from server.captioner import CaptionBatching, ImageLimits, ServedCaptioner, load_captioner_version
from tests.captioner_tiny import CAPTIONS, picture_bytes, tiny_domain_head


def _green_png() -> bytes:
    rng = np.random.default_rng(3)
    pixels = np.clip(np.array([30, 200, 30]) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def domain_repo(tmp_path_factory: pytest.TempPathFactory, tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> Path:
    """v1: no check; v2: check with a confident stand-in classifier; v3: check with an unsure one."""
    model, tokenizer = tiny_captioner
    repo = tmp_path_factory.mktemp("domain_repo")
    export_captioner(model, tokenizer.to_str(), repo, version=1, weights_dtype="float32")
    export_captioner(model, tokenizer.to_str(), repo, version=2, weights_dtype="float32",
                     domain=tiny_domain_head(model))
    export_captioner(model, tokenizer.to_str(), repo, version=3, weights_dtype="float32",
                     domain=tiny_domain_head(model, label_bias=(0.0, 0.0, 0.0)))
    return repo


async def _caption(repo: Path, version: int, image: bytes, beam_size: int = 0, n_best: int = 0
                   ) -> caption_pb2.CaptionResponse:
    model = load_captioner_version(repo, "captioner", version, intra_op_threads=1)
    served = ServedCaptioner.create(model, CaptionBatching())
    try:
        config = caption_pb2.CaptionConfig(beam_size=beam_size, n_best=n_best)
        job = model.prepare(image, request_options(config), ImageLimits(), "r1")
        return to_response(await served.caption(job), model.name, model.version, "r1", 0.0)
    finally:
        await served.close()


async def test_in_domain_pictures_are_decoded_and_say_so(domain_repo: Path) -> None:
    reply = await _caption(domain_repo, 2, picture_bytes("red", seed=700), beam_size=3, n_best=2)
    assert reply.HasField("domain") and reply.domain.in_domain and reply.domain.label == ""
    assert 0 < reply.domain.score <= reply.domain.threshold
    assert reply.captions[0].text == CAPTIONS["red"] and len(reply.captions) == 2
    assert reply.timing.decoder_steps > 0


async def test_out_of_domain_pictures_get_the_fallback_without_decoding(domain_repo: Path) -> None:
    named = await _caption(domain_repo, 2, _green_png(), beam_size=3, n_best=2)
    assert not named.domain.in_domain and named.domain.score > named.domain.threshold
    assert named.domain.label == "ostrich" and named.domain.label_prob == pytest.approx(0.9867, abs=1e-3)
    assert [c.text for c in named.captions] == ["a photo of an ostrich"]  # one caption, whatever n_best asked
    assert named.captions[0].log_prob == pytest.approx(math.log(named.domain.label_prob), abs=1e-5)
    assert named.captions[0].finished and named.timing.decoder_steps == 0
    generic = await _caption(domain_repo, 3, _green_png())
    assert [c.text for c in generic.captions] == ["a photo"] and generic.captions[0].log_prob == 0.0
    assert generic.domain.label == "" and generic.domain.label_prob == pytest.approx(1 / 3, abs=1e-4)


async def test_versions_without_a_check_decode_everything(domain_repo: Path) -> None:
    reply = await _caption(domain_repo, 1, _green_png())
    assert not reply.HasField("domain") and reply.captions[0].text in CAPTIONS.values()


async def test_warm_up_runs_the_decoder_even_when_grey_is_out_of_domain(domain_repo: Path) -> None:
    model = load_captioner_version(domain_repo, "captioner", 2, intra_op_threads=1)
    batches: list[str] = []
    served = ServedCaptioner.create(model, CaptionBatching(),
                                    lambda label, version: lambda record: batches.append(label))
    try:
        await served.warm_up()
    finally:
        await served.close()
    assert batches == ["captioner/encoder", "captioner/decoder_step"]


def test_malformed_domain_manifests_are_refused(domain_repo: Path) -> None:
    manifest = read_manifest(domain_repo / "captioner" / "2")
    check = DomainCheck.from_manifest(manifest)
    assert check is not None and check.probs_output == "label_probs" and len(check.policy.labels) == 3
    spec = manifest.extras["domain"]
    for bad, match in [({**spec, "score_output": "nope"}, "names outputs"), ({**spec, "labels": []}, "no labels"),
                       ({**spec, "score_threshold": -1.0}, "score_threshold"), ("x", "must be an object")]:
        with pytest.raises(ValueError, match=match):
            DomainCheck.from_manifest(dataclasses.replace(manifest, extras={**manifest.extras, "domain": bad}))
