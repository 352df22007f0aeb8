"""Free-text matcher (models/symptom_text.py): chunking and negation scope, matching with a deterministic fake
encoder, the phrase table round trip, and the bundled int8 MiniLM engine on a few sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.symptom_lexicon import LAY_TERMS
from models.symptom_text import PhraseTable, protected_phrases, split_chunks, understand
from tests.symptom_text_fake import fake_encode, fake_table

PROTECTED = protected_phrases(["can't keep food down", "no appetite", "pins and needles", "don't feel well"])


@pytest.mark.parametrize(("text", "chunks"), [
    ("my head is pounding and I can't keep food down, no fever though",
     [("my head is pounding", False), ("can't keep food down", False), ("fever", True)]),
    ("Denies nausea or vomiting", [("nausea", True), ("vomiting", True)]),
    ("No fever, but a bad cough", [("fever", True), ("cough", False)]),
    ("headache without fever", [("headache", False), ("fever", True)]),
    ("I'm not throwing up anymore", [("throwing up", True)]),
    ("no fever, my head hurts", [("fever", True), ("my head hurts", False)]),
    ("neither fever nor chills", [("fever", True), ("chills", True)]),
    ("no fever, cough or chills", [("fever", True), ("cough", True), ("chills", True)]),
    ("my cough is gone and I have a runny nose", [("my cough", True), ("runny nose", False)]),
    ("I have no appetite and pins and needles in my feet",
     [("no appetite", False), ("pins and needles in my feet", False)]),
    ("I haven't had any fever since Monday", [("fever", True)]),
    ("Never had chest pain. I can't sleep.", [("chest pain", True), ("can't sleep", False)]),
    ("I work night shifts", [("work night shifts", False)]),
    ("hi doctor, thanks", [("thanks", False)]),
    ("", []),
])
def test_chunks_and_negation(text: str, chunks: list[tuple[str, bool]]) -> None:
    assert [(c.text, c.negated) for c in split_chunks(text, PROTECTED)] == chunks


def test_chunk_spans_point_into_the_text() -> None:
    text = "I’ve had a terrible headache since Tuesday, no fever"  # curly apostrophe
    chunks = split_chunks(text, PROTECTED)
    assert [text[c.start:c.end] for c in chunks] == ["headache", "fever"]


def test_understand_statuses_spans_and_unmatched() -> None:
    table = fake_table()
    texts = ["I have a headache and a runny nose, no fever. I work night shifts",
             "can't keep food down, denies cough",
             "fever cough"]  # no separator: found through word windows
    a, b, c = understand(texts, fake_encode, table, threshold=0.9)
    assert [(f.symptom_id, f.present) for f in a.findings] == [("HP:9000000", True), ("HP:9000003", True),
                                                              ("HP:9000001", False)]
    assert all(0.9 <= f.confidence <= 1.0 + 1e-6 for f in a.findings)
    assert [texts[0][s:e] for s, e in a.not_understood] == ["work night shifts"]
    assert texts[0][a.findings[1].start:a.findings[1].end] == "runny nose"
    assert [(f.symptom_id, f.present) for f in b.findings] == [("HP:9000002", True), ("HP:9000004", False)]
    assert {(f.symptom_id, f.present) for f in c.findings} == {("HP:9000001", True), ("HP:9000004", True)}
    assert c.not_understood == []


def test_threshold_and_duplicates() -> None:
    table = fake_table()
    [r] = understand(["headache, my head hurts, blue moon"], fake_encode, table, threshold=0.9)
    assert [f.symptom_id for f in r.findings] == ["HP:9000000"]  # said twice, reported once
    assert len(r.not_understood) == 1
    [r] = understand(["headache"], fake_encode, table, threshold=1.01)
    assert r.findings == [] and r.not_understood == [(0, 8)]


def test_phrase_table_round_trip(tmp_path: Path) -> None:
    table = fake_table()
    table.save(tmp_path)
    loaded = PhraseTable.load(tmp_path)
    assert loaded.phrases == table.phrases and loaded.symptom_ids == table.symptom_ids
    assert loaded.symptom_names == table.symptom_names and loaded.source == table.source
    np.testing.assert_array_equal(loaded.symptom, table.symptom)
    np.testing.assert_allclose(loaded.embeddings, table.embeddings, atol=1e-2)  # stored as int8 + row scale
    assert ((loaded.embeddings * table.embeddings).sum(axis=1) > 0.998).all()
    np.testing.assert_allclose(np.linalg.norm(loaded.embeddings, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="phrase table"):
        PhraseTable.load(tmp_path / "missing")


def test_lexicon_phrases_are_lower_case_and_unique() -> None:
    for sid, phrases in LAY_TERMS.items():
        assert sid.startswith(("HP:", "NUI:")), sid
        assert len(set(phrases)) == len(phrases), sid


# ---- the bundled engine -------------------------------------------------------------------------------------

BUNDLED = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture(scope="module")
def bundled() -> tuple[object, PhraseTable, float]:
    from engines.manifest import read_manifest, version_dir
    from engines.text_encoder import load_text_encoder

    folder = version_dir(BUNDLED, "symptom_text")
    encoder = load_text_encoder(BUNDLED, "symptom_text", int(folder.name), intra_op_threads=1)
    return encoder, PhraseTable.load(folder), float(read_manifest(folder, verify=False).extras["threshold"])


@pytest.mark.parametrize(("text", "expected"), [
    ("my head is pounding and I can't keep food down, no fever though",
     {("HP:0002315", True), ("HP:0002013", True), ("HP:0001945", False)}),
    ("I have a runny nose and a sore throat but I don't have a cough",
     {("HP:0031417", True), ("HP:0033050", True), ("HP:0012735", False)}),
    ("Denies chest pain or shortness of breath.", {("HP:0100749", False), ("HP:0002094", False)}),
])
def test_bundled_minilm_reads_sentences(bundled: tuple[object, PhraseTable, float], text: str,
                                        expected: set[tuple[str, bool]]) -> None:
    encoder, table, threshold = bundled
    [r] = understand([text], encoder, table, threshold)  # type: ignore[arg-type]
    assert {(f.symptom_id, f.present) for f in r.findings} == expected
