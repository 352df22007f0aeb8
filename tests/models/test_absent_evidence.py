"""`nui eval absent`'s measure of how a "no" answer moves a posterior: naive Bayes on the table moves the mass
off the diseases that usually have the denied symptom; a posterior that ignores "no" answers does not."""

from __future__ import annotations

import numpy as np

from models.diagnosis_dialog import answer_model, kb_posterior
from nui.absent_evidence import denial_effect, denial_states
from tests.diagnosis_tiny import N_SYMPTOMS, tiny_tables


def test_a_no_answer_moves_naive_bayes_but_not_a_posterior_that_ignores_it() -> None:
    tables = tiny_tables()
    q = tables.probabilities
    answers = answer_model(q)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, len(q), size=200)
    truth = np.where(rng.random((200, N_SYMPTOMS)) < q[targets], 1, 0).astype(np.int8)  # present by the table
    start, denied = denial_states(truth, q, seed=1)
    assert ((start > 0) <= (truth > 0)).all() and (start.sum(axis=1) <= 2).all()
    ok = denied >= 0
    assert ok.sum() > 50
    assert (truth[np.flatnonzero(ok), denied[ok]] <= 0).all(), "only symptoms the patient lacks are denied"
    again = denial_states(truth, q, seed=1)
    assert np.array_equal(again[1], denied)

    nb = denial_effect(lambda ev: kb_posterior(ev, answers), start, denied, q, targets)
    deaf = denial_effect(lambda ev: kb_posterior(np.maximum(ev, 0), answers), start, denied, q, targets)
    # two findings nearly pin down a tiny-table disease, so one "no" moves naive Bayes by ~10 %, not 50 %
    assert nb["median_mass_ratio"] < 0.97 and nb["mass_after"] < 0.95 * nb["mass_before"]
    assert deaf["median_mass_ratio"] == 1.0 and deaf["mass_after"] == deaf["mass_before"]
