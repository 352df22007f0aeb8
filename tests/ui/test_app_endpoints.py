"""Every endpoint of the launched app, called with gradio_client, against a running `nui serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.captioner_tiny import CAPTIONS, picture
from tests.ui.conftest import say

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture
def gc(app_url: str) -> Iterator[Any]:
    """A fresh browser-like session (its own dialog state)."""
    yield gradio_client.Client(app_url, verbose=False)


def texts(chat: list[dict[str, Any]]) -> list[str]:
    """Message texts of a chat value as the API returns it (content: str or a list of parts)."""
    out = []
    for m in chat:
        c = m["content"]
        out.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if isinstance(p, dict)))
    return out


def test_ask_answers_and_speaks(gc: Any) -> None:
    chat, cleared = gc.predict("what can you do?", [], api_name="/ask")
    assert cleared == "" and texts(chat)[0] == "what can you do?" and "three things" in texts(chat)[1]
    audio, rate = sf.read(gc.predict(chat, api_name="/speak"))
    assert rate > 8000 and len(audio) / rate > 1.0  # the reply, spoken


def test_symptom_conversation_keeps_state_across_turns(gc: Any) -> None:
    chat, _ = gc.predict("I have a fever and a cough", [], api_name="/ask")
    question = texts(chat)[-1]
    assert question.endswith("?")
    chat, _ = gc.predict("yes", chat, api_name="/ask")
    assert "Conditions that fit best so far" in texts(chat)[-1]


def test_hear_file_and_microphone_recording(gc: Any, tmp_path: Path) -> None:
    wav = say("what can you do", tmp_path / "q.wav")
    heard, chat = gc.predict(gradio_client.handle_file(str(wav)), [], api_name="/hear_file")
    assert heard == "what can you do" and "three things" in texts(chat)[-1]
    heard, chat = gc.predict(gradio_client.handle_file(str(wav)), [], api_name="/hear")
    assert heard == "what can you do"


def test_silence_and_junk_are_refused_before_the_server(gc: Any, tmp_path: Path) -> None:
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    heard, chat = gc.predict(gradio_client.handle_file(str(silent)), [], api_name="/hear_file")
    assert heard == "" and "Only silence" in texts(chat)[-1]


def test_symptom_page_turn_returns_chart_data(gc: Any) -> None:
    chat, chart, question, cleared = gc.predict("I have a fever and a cough", [], api_name="/symptom_turn")
    assert question and question in texts(chat)[-1] and cleared == ""
    chat, chart, _, _ = gc.predict("yes", chat, api_name="/symptom_turn")
    rows = chart["value"]["data"] if "value" in chart else chart["data"]
    assert len(rows) == 5 and all(0 <= r[1] <= 100 for r in rows)


def test_picture_then_question_and_image_page(gc: Any, tmp_path: Path) -> None:
    red, blue = tmp_path / "red.png", tmp_path / "blue.jpg"
    Image.fromarray(picture("red")).save(red)
    Image.fromarray(picture("blue", seed=3)).save(blue)
    gc.predict(gradio_client.handle_file(str(red)), [], api_name="/set_picture")
    chat, _ = gc.predict("what is in this picture?", [], api_name="/ask")
    assert texts(chat)[-1] == f"I think it shows {CAPTIONS['red']}."
    table, message = gc.predict([gradio_client.handle_file(str(red)), gradio_client.handle_file(str(blue))], None,
                                api_name="/describe")
    rows = table["data"]
    best = {r[0]: r[2] for r in rows if r[1] == 1}
    assert best == {"red.png": CAPTIONS["red"], "blue.jpg": CAPTIONS["blue"]} and "2 picture" in message
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    table, message = gc.predict([gradio_client.handle_file(str(empty))], None, api_name="/describe")
    assert table["data"] in ([], [[]]) or (not any(table["data"][0]) and "empty" in message)


def test_status_page(gc: Any) -> None:
    services, models, latency, message = gc.predict(api_name="/status")
    assert "SERVING" in message
    assert ["nui.v1.Speech", "SERVING"] in services["data"]
    assert {"speech_ctc", "diagnosis"} <= {r[0] for r in models["data"]}
    assert latency["data"] and "Metrics from" in message
