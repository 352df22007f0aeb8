"""The assistant's dialog manager: one utterance in, one reply out; plain Python, no Gradio.

    manager = DialogManager(NuiClient("127.0.0.1:50051"), free_text=True, captions=False)
    state = DialogState()
    reply = manager.handle(state, "I have a fever and a cough")   # -> ranked diseases + next question
    reply = manager.handle(state, "yes")                            # answers that question

The conversation lives in `DialogState` (plain data: each browser session holds its own copy); the
manager holds only the server client and what the server can do. Symptom checking is multi-turn: the
findings collected so far travel as `history` on every Diagnose call, the answer to the server's
suggested question as `evidence`, and free text (when the server reads it) as `text`. The server decides
which question is worth asking next (expected information gain); the dialog stops asking after
MAX_QUESTIONS or once one condition is clearly ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ui.client import Caption, Diagnosis, Finding, NuiError, Question
from ui.intent import Intent, classify

MAX_QUESTIONS = 8
CONFIDENT_PROBABILITY = 0.8  # stop asking once the top condition is this likely
SHOWN_DISEASES = 3
SHORT_NOTICE = "This is not medical advice; see a doctor about your symptoms."

HELP = ("I can do three things. Tell me how you feel, for example 'I have a headache and a fever', and I "
        "will ask a few yes or no questions and show which conditions fit best. Upload a picture and ask "
        "'what is in this picture?' and I will describe it. Say 'start over' to begin a new symptom check.")


class Services(Protocol):
    """What the dialog needs from the server (NuiClient implements it)."""

    def diagnose(self, evidence: Sequence[tuple[str, bool]] = (), history: Sequence[tuple[str, bool]] = (),
                 text: str = "", top_k: int = 5) -> Diagnosis: ...

    def caption(self, images: Sequence[bytes], n_best: int = 3) -> list[list[Caption]]: ...


@dataclass
class DialogState:
    findings: list[Finding] = field(default_factory=list)  # what the person told us so far
    question: Question | None = None  # the yes/no question waiting for an answer
    questions_asked: int = 0
    skipped: set[str] = field(default_factory=set)  # symptom ids the person did not know
    image: bytes | None = None  # the last uploaded picture (encoded)
    diagnosis: Diagnosis | None = None  # the latest ranking

    def history(self) -> list[tuple[str, bool]]:
        return [(f.symptom_id, f.present) for f in self.findings]

    def reset_symptoms(self) -> None:
        self.findings, self.question, self.questions_asked, self.skipped, self.diagnosis = [], None, 0, set(), None


@dataclass(frozen=True)
class Reply:
    text: str  # shown in the chat
    intent: Intent
    diagnosis: Diagnosis | None = None  # set when this turn ranked diseases
    captions: list[Caption] = field(default_factory=list)
    error: str = ""  # set when the server refused; `text` then explains it in plain words


def _names(findings: Sequence[Finding]) -> str:
    return ", ".join(f.name.lower() if f.present else f"no {f.name.lower()}" for f in findings)


class DialogManager:
    def __init__(self, services: Services, free_text: bool, captions: bool) -> None:
        self.services = services
        self.free_text = free_text
        self.captions = captions

    def handle(self, state: DialogState, text: str) -> Reply:
        """Answer one utterance (typed or transcribed) and update `state`."""
        if not text.strip():
            return Reply("I did not catch anything. Could you say that again?", Intent.HELP)
        intent = classify(text, awaiting_answer=state.question is not None)
        try:
            if intent == Intent.DESCRIBE_IMAGE:
                return self._describe(state)
            if intent == Intent.RESTART:
                state.reset_symptoms()
                return Reply("Alright, let's start over. How are you feeling?", intent)
            if intent in (Intent.HELP, Intent.GREETING):
                greeting = "Hello! " if intent == Intent.GREETING else ""
                return Reply(greeting + HELP, intent)
            if intent == Intent.THANKS:
                return Reply("You're welcome. " + SHORT_NOTICE, intent)
            if intent == Intent.GOODBYE:
                return Reply("Goodbye, take care. " + SHORT_NOTICE, intent)
            if intent in (Intent.YES, Intent.NO):
                assert state.question is not None  # classify only returns YES/NO while a question is pending
                return self._diagnose(state, intent, evidence=[(state.question.symptom_id, intent == Intent.YES)])
            if intent == Intent.UNSURE:
                assert state.question is not None
                state.skipped.add(state.question.symptom_id)
                state.question = None
                return Reply("OK, we'll leave that one out. Tell me about any other symptoms, or say 'start over'.",
                             intent)
            return self._diagnose(state, intent, text=text)
        except NuiError as e:
            return Reply(f"Sorry, the server could not answer: {e.message}", intent, error=str(e))

    def _describe(self, state: DialogState) -> Reply:
        if not self.captions:
            return Reply("I can't describe pictures yet: this server has no captioning model loaded.",
                         Intent.DESCRIBE_IMAGE)
        if state.image is None:
            return Reply("Upload a picture first, then ask me what is in it.", Intent.DESCRIBE_IMAGE)
        [captions] = self.services.caption([state.image], n_best=3)
        if not captions:
            return Reply("I could not come up with a description of that picture.", Intent.DESCRIBE_IMAGE)
        return Reply(f"I think it shows {captions[0].text}.", Intent.DESCRIBE_IMAGE, captions=captions)

    def _diagnose(self, state: DialogState, intent: Intent, evidence: Sequence[tuple[str, bool]] = (),
                  text: str = "") -> Reply:
        lead = ""
        if text and not self.free_text:
            lead = "This server's symptom checker cannot read sentences yet, so let me ask yes or no questions. "
            text = ""
        result = self.services.diagnose(evidence=evidence, history=state.history(), text=text)
        known = {f.symptom_id for f in state.findings}
        new = result.understood or [f for f in result.findings if f.symptom_id not in known]
        state.findings = list(result.findings)
        state.diagnosis = result
        if text and not new:
            lead = "I could not recognize a symptom in that. Try naming it plainly, like 'I have a sore throat'. "
        elif text:
            lead = f"I understood: {_names(new)}. "
        ranking = ""
        if state.findings and result.diseases:
            top = ", ".join(f"{d.name} {d.probability:.0%}" for d in result.diseases[:SHOWN_DISEASES])
            ranking = f"Conditions that fit best so far: {top}. "
        ask = self._next_question(state, result)
        return Reply(lead + ranking + ask + (f" {SHORT_NOTICE}" if ranking and not ask else ""), intent,
                     diagnosis=result)

    def _next_question(self, state: DialogState, result: Diagnosis) -> str:
        confident = bool(result.diseases) and result.diseases[0].probability >= CONFIDENT_PROBABILITY
        q = result.question
        if q is None or q.symptom_id in state.skipped or state.questions_asked >= MAX_QUESTIONS or confident:
            state.question = None
            return "That is all I need to ask. Say 'start over' to check other symptoms." if state.findings else \
                "Tell me how you feel."
        state.question = q
        state.questions_asked += 1
        return q.text
