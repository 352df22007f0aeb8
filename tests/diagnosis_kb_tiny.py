"""A tiny HPO + common-disease source (an hp.obo, a phenotype.hpoa and a small common-disease table)
and the build options that make a knowledge base of it: for knowledge-base, training and end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from training.diagnosis.knowledge import BuildOptions
from training.diagnosis.sources import CommonSource

OBO_TERMS = [
    ("HP:0000001", "All", None, []),
    ("HP:0000118", "Phenotypic abnormality", "HP:0000001", []),
    ("HP:0025142", "Constitutional symptom", "HP:0000118", []),
    ("HP:0001945", "Fever", "HP:0025142", ['"Fever" EXACT layperson []', '"Pyrexia" EXACT []']),
    ("HP:0012378", "Fatigue", "HP:0025142", ['"Tiredness" EXACT layperson []']),
    ("HP:0012531", "Pain", "HP:0025142", ['"Pain" EXACT layperson []']),
    ("HP:0002315", "Headache", "HP:0012531", ['"Headache" EXACT layperson []', '"Headaches" EXACT []']),
    ("HP:0002027", "Abdominal pain", "HP:0012531", ['"Stomach ache" EXACT layperson []']),
    ("HP:0002013", "Vomiting", "HP:0000118", ['"Throwing up" EXACT layperson []']),
    ("HP:0001250", "Seizure", "HP:0000118", ['"Fits" EXACT layperson []']),
    ("HP:0002069", "Bilateral tonic-clonic seizure", "HP:0001250", []),
    ("HP:0000613", "Photophobia", "HP:0000118", ['"Light sensitivity" EXACT layperson []']),
    ("HP:0001649", "Tachycardia", "HP:0000118", ['"Fast heart rate" EXACT layperson []']),
    ("HP:0000739", "Anxiety", "HP:0000118", ['"Anxious" EXACT layperson []']),
    ("HP:0030012", "Abnormal female reproductive system physiology", "HP:0000118", []),
    ("HP:0000132", "Menorrhagia", "HP:0030012", ['"Heavy periods" EXACT layperson []']),
    ("HP:0001939", "Abnormality of metabolism/homeostasis", "HP:0000118", []),
    ("HP:0003074", "Hyperglycemia", "HP:0001939", ['"High blood sugar" EXACT layperson []']),
    ("HP:0003674", "Onset", "HP:0000001", []),
    ("HP:0011463", "Childhood onset", "HP:0003674", []),
]

HPOA_ROWS = """\
ORPHA:1	Periodic fever syndrome		HP:0001945	PMID:1	TAS		HP:0040281			P	x
ORPHA:1	Periodic fever syndrome		HP:0002027	PMID:1	TAS		HP:0040282			P	x
ORPHA:1	Periodic fever syndrome		HP:0002315	PMID:1	TAS		HP:0040283			P	x
ORPHA:1	Periodic fever syndrome		HP:0012378	PMID:1	TAS		3/4			P	x
ORPHA:1	Periodic fever syndrome		HP:0002013	PMID:1	TAS		50%			P	x
ORPHA:1	Periodic fever syndrome		HP:0000739	PMID:1	TAS					P	x
ORPHA:1	Periodic fever syndrome		HP:0011463	PMID:1	TAS					C	x
OMIM:100001	Seizure syndrome 1		HP:0002069	PMID:2	PCS		HP:0040281			P	x
OMIM:100001	Seizure syndrome 1		HP:0001945	PMID:2	PCS		1/1			P	x
OMIM:100001	Seizure syndrome 1		HP:0012378	PMID:2	PCS		HP:0040282			P	x
OMIM:100001	Seizure syndrome 1		HP:0002315	PMID:2	PCS		HP:0040282			P	x
OMIM:100001	Seizure syndrome 1		HP:0001649	PMID:2	PCS		HP:0040282			P	x
OMIM:100001	Seizure syndrome 1	NOT	HP:0002013	PMID:2	PCS					P	x
OMIM:100002	Seizure syndrome 2		HP:0001250	PMID:3	PCS		HP:0040281			P	x
OMIM:100002	Seizure syndrome 2		HP:0001945	PMID:3	PCS		HP:0040282			P	x
OMIM:100002	Seizure syndrome 2		HP:0012378	PMID:3	PCS		HP:0040282			P	x
ORPHA:99828	Dengue fever		HP:0001945	PMID:4	TAS		HP:0040280			P	x
ORPHA:99828	Dengue fever		HP:0002315	PMID:4	TAS		HP:0040281			P	x
ORPHA:3	Female syndrome		HP:0000132	PMID:5	TAS		HP:0040281	FEMALE		P	x
ORPHA:3	Female syndrome		HP:0001945	PMID:5	TAS		HP:0040281			P	x
ORPHA:3	Female syndrome		HP:0012378	PMID:5	TAS		HP:0040281			P	x
ORPHA:3	Female syndrome		HP:0012531	PMID:5	TAS		HP:0040281			P	x
ORPHA:4	Sparse disease		HP:0001945	PMID:6	TAS		HP:0040281			P	x
ORPHA:5	Hyperglycemia syndrome		HP:0003074	PMID:7	TAS		HP:0040281			P	x
ORPHA:5	Hyperglycemia syndrome		HP:0001945	PMID:7	TAS		HP:0040281			P	x
ORPHA:5	Hyperglycemia syndrome		HP:0012378	PMID:7	TAS		HP:0040281			P	x
ORPHA:5	Hyperglycemia syndrome		HP:0002315	PMID:7	TAS		HP:0040282			P	x
"""

COMMON = CommonSource(
    diseases={
        "Migraine": {"icd10": "G43.909", "symptoms": ["Headache", "Nausea", "Light Sensitivity"]},
        "Tension Headache": {"icd10": "G44.209", "symptoms": ["Headaches", "Fatigue"]},
        "Epilepsy": {"icd10": "G40.909", "symptoms": ["Seizures", "Confusion"]},
        "Seizure Disorder": {"icd10": "G40.909", "symptoms": ["Seizures", "Convulsions"]},
        "Anxiety Disorder": {"icd10": "F41.9", "symptoms": ["Anxiety", "Rapid Heartbeat"]},
        "Endometriosis": {"icd10": "N80.9", "symptoms": ["Heavy Periods", "Pelvic Pain"]},
        "Dengue Fever": {"icd10": "A90", "symptoms": ["Fever", "Headache"]},
    },
    constraints={"N80.9": {"sex": "female", "min_age": 15, "max_age": 55},
                 "G43.909": {"female_probability": 0.75}},
    version="fixture")

TINY_OPTIONS = BuildOptions(rare_diseases=10, max_symptoms=100, min_frequent_symptoms=3, min_common_symptoms=2,
                            min_symptom_diseases=1)


def write_hpo_fixture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stanzas = ["format-version: 1.2\n"]
    for tid, name, parent, synonyms in OBO_TERMS:
        lines = ["[Term]", f"id: {tid}", f"name: {name}", *(f"synonym: {s}" for s in synonyms)]
        if parent:
            lines.append(f"is_a: {parent} ! parent")
        stanzas.append("\n".join(lines) + "\n")
    stanzas.append("[Term]\nid: HP:0009999\nname: Obsolete thing\nis_obsolete: true\n")
    stanzas.append("[Typedef]\nid: part_of\nname: part of\n")
    (folder / "hp.obo").write_text("\n".join(stanzas))
    header = ("#description: fixture\n#version: 2025-01-16\ndatabase_id\tdisease_name\tqualifier\thpo_id\treference\t"
              "evidence\tonset\tfrequency\tsex\tmodifier\taspect\tbiocuration\n")
    (folder / "phenotype.hpoa").write_text(header + HPOA_ROWS)
    return folder
