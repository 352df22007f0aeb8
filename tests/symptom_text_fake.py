"""A deterministic stand-in sentence encoder and a tiny phrase table for the free-text matcher's tests."""

from __future__ import annotations

import zlib

import numpy as np

from models.symptom_text import PhraseTable, table_phrases, words_of

DIM = 64
# (symptom id, name, lay phrases); ids are those of tests/diagnosis_tiny.py's symptoms 0..5
SYMPTOMS = [
    ("HP:9000000", "Headache", ("headache", "my head hurts")),
    ("HP:9000001", "Fever", ("fever", "high temperature")),
    ("HP:9000002", "Vomiting", ("throwing up", "can't keep food down")),
    ("HP:9000003", "Rhinorrhea", ("runny nose",)),
    ("HP:9000004", "Cough", ("cough",)),
    ("HP:9000005", "Poor appetite", ("no appetite",)),
]


def fake_encode(texts: list[str]) -> np.ndarray:
    """Sum of one seeded random vector per word, L2-normalised: equal word sets give cosine 1."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in words_of(t):
            out[i] += np.random.default_rng(zlib.crc32(w.text.encode())).standard_normal(DIM).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def fake_table(n_symptoms: int = len(SYMPTOMS)) -> PhraseTable:
    """The table over `n_symptoms` ids HP:9000000.. (the first ones named as in SYMPTOMS)."""
    symptoms = [(f"HP:{9000000 + i:07d}", f"Symptom {i}", (), ()) for i in range(n_symptoms)]
    lexicon = {sid: lay for sid, _, lay in SYMPTOMS}
    names = {sid: name for sid, name, _ in SYMPTOMS}
    symptoms = [(sid, names.get(sid, name), s, lay) for sid, name, s, lay in symptoms]
    phrases, owner, source = table_phrases(symptoms, lexicon)
    return PhraseTable(symptom_ids=[s[0] for s in symptoms], symptom_names=[s[1] for s in symptoms],
                       phrases=phrases, symptom=owner, source=source, embeddings=fake_encode(phrases))
