"""The UI's gRPC client against a real `nui serve` child process: every call, and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.captioner_tiny import CAPTIONS, picture_bytes
from tests.ui.conftest import ServerProcess, say
from ui.client import CAPTION_SERVICE, DIAGNOSIS_SERVICE, SPEECH_SERVICE, NuiClient, NuiError
from ui.up import free_port


def test_services_health_and_status(client: NuiClient) -> None:
    services = client.services()
    for name in (SPEECH_SERVICE, DIAGNOSIS_SERVICE, CAPTION_SERVICE, "grpc.health.v1.Health"):
        assert name in services
    assert client.health() == "SERVING"
    assert client.health("no.such.Service") == "UNKNOWN_SERVICE"
    status = client.status()
    assert status.serving and status.services[SPEECH_SERVICE] == "SERVING" and status.latency_ms > 0
    assert "grpc.health.v1.Health" not in status.services


def test_recognize_a_spoken_sentence(client: NuiClient, tmp_path: Path) -> None:
    wav = say("the weather is nice today", tmp_path / "s.wav")
    t = client.recognize(wav.read_bytes())
    assert t.model == "speech_ctc" and t.model_version >= 1 and t.is_final
    assert 1.0 < t.audio_duration_s < 4.0
    assert {"weather", "today"} & set(t.text.split()), t.text


def test_server_errors_are_readable(client: NuiClient) -> None:
    with pytest.raises(NuiError) as e:
        client.recognize(b"not audio at all")
    assert e.value.code == "INVALID_ARGUMENT" and "audio" in e.value.message and "Traceback" not in str(e.value)
    with pytest.raises(NuiError) as e:
        client.diagnose(evidence=[("HP:NOPE", True)])
    assert e.value.code == "INVALID_ARGUMENT" and "evidence[0].symptom_id" in e.value.message


def test_unreachable_server_is_one_readable_error() -> None:
    with NuiClient(f"127.0.0.1:{free_port()}", timeout_s=2) as c:
        with pytest.raises(NuiError) as e:
            c.recognize(b"x")
        assert e.value.code == "UNAVAILABLE" and "the server is unavailable" in e.value.message
        assert c.offers(SPEECH_SERVICE) is False
        with pytest.raises(NuiError, match=r"not SERVING after 0\.5 s"):
            c.wait_ready(0.5)


def test_diagnose_multi_turn(client: NuiClient) -> None:
    first = client.diagnose()
    assert first.notice and first.question is not None and not first.findings
    q = first.question
    second = client.diagnose(evidence=[(q.symptom_id, True)])
    assert [(f.symptom_id, f.present) for f in second.findings] == [(q.symptom_id, True)]
    assert abs(sum(d.probability for d in second.diseases) - 1) < 1 or len(second.diseases) == 5
    assert second.question is None or second.question.symptom_id != q.symptom_id


def test_caption_several_images_at_once(client: NuiClient) -> None:
    assert client.has_captions()
    red, blue = picture_bytes("red"), picture_bytes("blue", fmt="JPEG", seed=5)
    out = client.caption([red, blue], n_best=2)
    assert [c[0].text for c in out] == [CAPTIONS["red"], CAPTIONS["blue"]]
    assert all(len(c) == 2 and c[0].score >= c[1].score for c in out)
    with pytest.raises(NuiError) as e:
        client.caption([red, b"\x89PNG broken"])
    assert e.value.code == "INVALID_ARGUMENT" and "image 2" in e.value.message


def test_streaming_absent_without_a_streaming_model(client: NuiClient) -> None:
    # The test repository has no streaming speech model: the client must say so, not hang.
    assert client.has_streaming() is False


def test_metrics_endpoint_feeds_the_status_tables(server: ServerProcess, client: NuiClient, ui_repo: Path) -> None:
    from ui.status_page import read_metrics

    client.diagnose()
    models, latency = read_metrics(server.metrics_url)
    # (The captioner is not in nui_model_info yet: the server registers only speech and diagnosis there.)
    assert {"speech_ctc", "diagnosis"} <= set(models["model"])
    versions = {v.name for m in ui_repo.iterdir() if m.is_dir() for v in m.iterdir() if v.is_dir()}
    assert set(models["engine"]) and set(models["version"]) <= versions
    assert "nui.v1.Diagnosis/Diagnose" in set(latency["method"])
