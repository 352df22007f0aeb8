"""Dialog: expected information gain on a hand-made knowledge base, question choice, tables, simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.diagnosis_dialog import (
    DiagnosisTables,
    SymptomInfo,
    answer_model,
    entropy_bits,
    expected_information_gain,
    kb_posterior,
    lookahead_gain,
    lookahead_rows,
    next_question,
    question_text,
    simulate,
)
from tests.diagnosis_tiny import tiny_tables

# 4 diseases x 4 symptoms: s0 every disease has (uninformative), s1 only d0 (splits 1:3), s2 d0 and d1
# (splits 2:2: the most informative under a uniform prior), s3 nobody has.
HAND = np.array([[0.9, 0.9, 0.9, 0.0],
                 [0.9, 0.0, 0.9, 0.0],
                 [0.9, 0.0, 0.0, 0.0],
                 [0.9, 0.0, 0.0, 0.0]], dtype=np.float32)


def brute_force_eig(p: np.ndarray, q: np.ndarray, s: int) -> float:
    """H(p) - sum_a P(a) H(p | a), straight from the definition."""
    yes, no = p * q[:, s], p * (1 - q[:, s])
    return float(entropy_bits(p) - yes.sum() * entropy_bits(yes / yes.sum()) - no.sum() * entropy_bits(no / no.sum()))


def test_information_gain_prefers_the_even_split() -> None:
    answers = answer_model(HAND)
    uniform = np.full(4, 0.25)
    gain = expected_information_gain(uniform, answers)
    assert gain.shape == (4,)
    for s in range(4):
        assert gain[s] == pytest.approx(brute_force_eig(uniform, answers.q, s), abs=1e-9)
    assert gain[2] > gain[1] > gain[0] and gain[0] < 1e-9 and gain[3] < 1e-9
    assert gain[2] == pytest.approx(0.7193, abs=1e-4)  # H_b(0.455) - (H_b(0.9) + H_b(0.01)) / 2
    question = next_question(uniform, np.zeros(4), answers)
    assert question is not None and question.symptom == 2 and question.p_yes == pytest.approx(0.455)


def test_asked_symptoms_are_not_asked_again_and_certainty_stops_the_dialog() -> None:
    answers = answer_model(HAND)
    question = next_question(np.full(4, 0.25), np.array([0, 0, 1, 0]), answers)
    assert question is not None and question.symptom == 1  # s2 is known: s1 is next best
    assert next_question(np.array([1.0, 0, 0, 0]), np.zeros(4), answers) is None  # nothing left to learn


def test_the_other_sex_is_not_asked_and_floor_is_checked() -> None:
    answers = answer_model(HAND)
    sex_of_symptom = np.array([0, 0, 1, 0], dtype=np.int8)  # s2 female-only
    question = next_question(np.full(4, 0.25), np.zeros(4), answers, sex=2, symptom_sex=sex_of_symptom)
    assert question is not None and question.symptom == 1
    with pytest.raises(ValueError, match="floor"):
        answer_model(HAND, floor=0.0)


def test_question_text_and_tables_round_trip(tmp_path: Path) -> None:
    assert question_text(SymptomInfo("HP:1", "Fever", lay_names=("High temperature",))) == \
        "Do you have this symptom: high temperature?"
    assert question_text(SymptomInfo("HP:2", "EEG abnormality")) == "Do you have this symptom: EEG abnormality?"
    tables = tiny_tables()
    tables.save(tmp_path)
    loaded = DiagnosisTables.load(tmp_path)
    assert loaded.diseases == tables.diseases and loaded.symptoms == tables.symptoms
    np.testing.assert_array_equal(loaded.probabilities, tables.probabilities)
    assert loaded.symptom_index[tables.symptoms[5].id] == 5 and loaded.symptom_sex[-1] == 1
    with pytest.raises(ValueError, match="does not hold valid diagnosis tables"):
        DiagnosisTables.load(tmp_path / "missing")


def test_simulation_converges_with_a_bayes_posterior() -> None:
    tables = tiny_tables()
    answers = answer_model(tables.probabilities)
    rng = np.random.default_rng(1)
    n = 200
    disease = rng.integers(0, 8, n)
    truth = (rng.random((n, 32)) < tables.probabilities[disease]).astype(np.int8)
    truth[np.arange(n), np.argmax(tables.probabilities[disease], axis=1)] = 1  # at least one present finding

    def posterior(evidence: np.ndarray, age: np.ndarray, sex: np.ndarray) -> np.ndarray:
        log_p = (np.log(answers.q) @ (evidence.T > 0) + np.log(1 - answers.q) @ (evidence.T < 0)).T
        p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    result = simulate(posterior, answers, truth, disease, np.full(n, -1.0), np.zeros(n, dtype=np.int64),
                      max_turns=15, start_findings=1, seed=0)
    summary = result.summary()
    assert result.initial_findings.tolist() == [1] * n
    assert summary["top5"]["reached_rate"] >= summary["top1"]["reached_rate"] >= 0.8
    assert (result.turns_to_top5[result.turns_to_top1 >= 0] <= result.turns_to_top1[result.turns_to_top1 >= 0]).all()
    assert 0 < summary["top1"]["mean_turns_when_reached"] < 6


def test_model_lookahead_equals_kb_gain_when_the_model_is_bayes() -> None:
    answers = answer_model(HAND)
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    candidates = np.array([2, 1, 0])
    rows = lookahead_rows(np.zeros(4), candidates)
    assert rows.shape == (6, 4) and rows[0, 2] == 1 and rows[3, 2] == -1 and np.count_nonzero(rows) == 6
    # a "model" that is exactly Bayes' rule with the answer model gives back the closed-form EIG
    log_p = np.log(prior) + np.where(rows > 0, 1, 0) @ np.log(answers.q).T + np.where(rows < 0, 1, 0) @ np.log(
        1 - answers.q).T
    bayes = np.exp(log_p) / np.exp(log_p).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(lookahead_gain(prior, candidates, bayes, answers),
                               expected_information_gain(prior, answers)[candidates], atol=1e-9)
    post = kb_posterior(np.array([[1.0, 0, 1, 0], [1.0, -1, 1, 0]]), answers)
    assert post.shape == (2, 4) and post[0, 0] == pytest.approx(post[0, 1])  # d0 and d1 both have s0 and s2
    assert post[1].argmax() == 1 and post[1, 1] == pytest.approx(0.8903, abs=1e-4)  # "no s1": d0 unlikely
