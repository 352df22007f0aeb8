"""Intent rules and the dialog manager, the latter over the real client and server (tiny models)."""

from __future__ import annotations

import pytest

from tests.captioner_tiny import CAPTIONS, picture_bytes
from ui.client import NuiClient
from ui.dialog import MAX_QUESTIONS, DialogManager, DialogState
from ui.intent import Intent, classify


@pytest.mark.parametrize(("text", "pending", "intent"), [
    ("What is in this picture?", False, Intent.DESCRIBE_IMAGE),
    ("no, describe the photo", True, Intent.DESCRIBE_IMAGE),
    ("hello", False, Intent.GREETING),
    ("Hi there!", True, Intent.GREETING),
    ("what can you do", False, Intent.HELP),
    ("thank you", False, Intent.THANKS),
    ("bye", False, Intent.GOODBYE),
    ("let's start over", True, Intent.RESTART),
    ("yes", True, Intent.YES),
    ("Yeah I do", True, Intent.YES),
    ("yes", False, Intent.SYMPTOMS),  # nothing was asked: not an answer
    ("nope", True, Intent.NO),
    ("I don't know", True, Intent.UNSURE),
    ("I have a headache and a fever", True, Intent.SYMPTOMS),  # long: symptom talk, not "I have" = yes
    ("no fever but my throat hurts a lot", True, Intent.SYMPTOMS),
    ("hello I have a cough", False, Intent.SYMPTOMS),
])
def test_intent_rules(text: str, pending: bool, intent: Intent) -> None:
    assert classify(text, awaiting_answer=pending) == intent


def test_symptom_dialog_collects_answers_as_history(client: NuiClient) -> None:
    manager = DialogManager(client, free_text=client.reads_free_text(), captions=True)
    state = DialogState()
    first = manager.handle(state, "I have a fever and a cough")
    assert first.intent == Intent.SYMPTOMS and state.question is not None
    asked = state.question
    assert asked.text in first.text
    reply = manager.handle(state, "yes")
    assert reply.intent == Intent.YES and reply.diagnosis is not None
    assert (asked.symptom_id, True) in state.history()
    assert "Conditions that fit best so far" in reply.text
    second = state.question
    if second is not None:
        before = len(state.history())
        manager.handle(state, "no")
        assert (second.symptom_id, False) in state.history() and len(state.history()) == before + 1
    for _ in range(MAX_QUESTIONS + 2):  # the dialog stops asking after MAX_QUESTIONS
        if state.question is None:
            break
        manager.handle(state, "no")
    assert state.question is None and state.questions_asked <= MAX_QUESTIONS
    manager.handle(state, "start over")
    assert state.history() == [] and state.diagnosis is None


def test_unsure_skips_and_empty_input_asks_again(client: NuiClient) -> None:
    manager = DialogManager(client, free_text=False, captions=False)
    state = DialogState()
    assert "did not catch" in manager.handle(state, "   ").text
    manager.handle(state, "I feel sick")
    skipped = state.question
    assert skipped is not None
    reply = manager.handle(state, "not sure")
    assert reply.intent == Intent.UNSURE and state.question is None and skipped.symptom_id in state.skipped
    assert state.history() == []


def test_describe_picture_uses_the_last_upload(client: NuiClient) -> None:
    manager = DialogManager(client, free_text=False, captions=True)
    state = DialogState()
    assert "Upload a picture first" in manager.handle(state, "what is in this picture?").text
    state.image = picture_bytes("blue")
    reply = manager.handle(state, "what is in this picture?")
    assert reply.text == f"I think it shows {CAPTIONS['blue']}." and reply.captions
    no_captions = DialogManager(client, free_text=False, captions=False)
    assert "no captioning model" in no_captions.handle(state, "describe the picture").text


def test_server_errors_become_a_polite_reply() -> None:
    from ui.up import free_port

    with NuiClient(f"127.0.0.1:{free_port()}", timeout_s=2) as dead:
        reply = DialogManager(dead, free_text=False, captions=False).handle(DialogState(), "I have a cough")
    assert reply.error and reply.text.startswith("Sorry, the server could not answer")


def test_free_text_symptoms_and_negation_are_understood(client: NuiClient) -> None:
    if not client.reads_free_text():
        pytest.skip("the server's diagnosis model has no free-text model (bundle one, or set NUI_UI_TEST_REPO)")
    manager = DialogManager(client, free_text=True, captions=False)
    state = DialogState()
    reply = manager.handle(state, "I have a fever but no cough")
    assert reply.text.startswith("I understood: fever, no cough."), reply.text
    assert {(f.name.lower(), f.present) for f in state.findings} >= {("fever", True), ("cough", False)}
    assert "could not recognize a symptom" in manager.handle(state, "I work in an office").text
