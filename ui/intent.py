"""What the person wants from one utterance: keyword rules, checked in a fixed order.

    classify("what is in this picture?", awaiting_answer=False)   # Intent.DESCRIBE_IMAGE
    classify("yes I do", awaiting_answer=True)                      # Intent.YES

Why rules and not an embedding model: the UI is a thin client (no models in-process, see STYLE.md),
and the symptom part of understanding happens on the server (the diagnosis service reads free text
and says which symptoms it understood). Rules only route the utterance: anything that is not an answer
to the pending question, a request about the image, a greeting, help, thanks, goodbye or a restart is
treated as symptom talk and sent to the diagnosis service. Rules are checked on whole words, in the
order of RULES, so "no, what's in the photo?" describes the photo rather than answering "no".
"""

from __future__ import annotations

import re
from enum import StrEnum


class Intent(StrEnum):
    DESCRIBE_IMAGE = "describe_image"
    RESTART = "restart"
    HELP = "help"
    GREETING = "greeting"
    THANKS = "thanks"
    GOODBYE = "goodbye"
    YES = "yes"
    NO = "no"
    UNSURE = "unsure"
    SYMPTOMS = "symptoms"


_IMAGE = (r"\b(picture|pictures|image|images|photo|photos|photograph|pic|caption)\b"
          r"|\bdescribe (it|this|that|the)\b|\bwhat do you see\b")
RULES: list[tuple[Intent, str]] = [
    (Intent.DESCRIBE_IMAGE, _IMAGE),
    (Intent.RESTART, r"\b(start over|restart|reset|new (conversation|check|session)|begin again|clear)\b"),
    (Intent.HELP, r"\b(help|what can you do|how does this work|who are you|what are you)\b"),
    (Intent.THANKS, r"^(thanks|thank you|thx|cheers)\b"),
    (Intent.GOODBYE, r"^(bye|goodbye|see you|good night)\b"),
    (Intent.GREETING, r"^(hi|hello|hey|good (morning|afternoon|evening))\b[\s!.,]*(there)?[\s!.,]*$"),
]
_ANSWERS: list[tuple[Intent, str]] = [
    (Intent.UNSURE, r"\b(not sure|don'?t know|do not know|unsure|maybe|no idea|skip|pass)\b"),
    (Intent.NO, r"^(no|nope|nah|not really|never|i don'?t|i do not|i haven'?t|negative)\b"),
    (Intent.YES, r"^(yes|yeah|yep|yup|sure|i do|i have|i am|correct|right|affirmative|definitely|indeed|a little)\b"),
]
MAX_ANSWER_WORDS = 4  # "yes I do have it"; longer utterances are symptom talk (the server reads negation)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w'\s?!.,]", " ", text.lower()).split())


def classify(text: str, awaiting_answer: bool) -> Intent:
    """The intent of one utterance; yes/no/unsure only count while a question is pending."""
    t = normalize(text)
    for intent, pattern in RULES:
        if re.search(pattern, t):
            return intent
    if awaiting_answer and len(t.split()) <= MAX_ANSWER_WORDS:
        for intent, pattern in _ANSWERS:
            if re.search(pattern, t):
                return intent
    return Intent.SYMPTOMS
