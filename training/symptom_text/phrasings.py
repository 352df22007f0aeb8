"""How people say common symptoms: two separately written sets, one to tune the matcher's threshold and
one to evaluate it (training/symptom_text/descriptions.py turns them into descriptions).

Per symptom id: `np` noun phrases (fit "I have ...", "no ...", "denies ..."), `say` whole present-tense
statements ("my throat is killing me"), `ing` progressive verb phrases ("throwing up": fit "I keep ...",
"I'm not ... anymore"). The two sets share no phrasing (a test checks it), and neither was copied from
models/symptom_lexicon.py; `nui eval symptom-text` reports how many evaluation phrasings the lexicon
happens to contain verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phrasings:
    np: tuple[str, ...] = ()
    say: tuple[str, ...] = ()
    ing: tuple[str, ...] = ()


def _p(np: str = "", say: str = "", ing: str = "") -> Phrasings:
    """'|'-separated alternatives per form."""
    return Phrasings(*(tuple(x.strip() for x in f.split("|") if x.strip()) for f in (np, say, ing)))


TUNE: dict[str, Phrasings] = {
    "HP:0002315": _p("a headache|a bad headache", "my head aches", ""),
    "HP:0001945": _p("a fever|a high fever", "I'm running a fever", ""),
    "HP:0002013": _p("vomiting", "I've been sick several times", "vomiting"),
    "HP:0002018": _p("nausea", "I feel queasy", ""),
    "HP:0002014": _p("diarrhea|loose bowels", "I've got the runs", ""),
    "HP:0002027": _p("abdominal pain|a stomachache", "my tummy hurts", ""),
    "HP:0012735": _p("a cough", "I've got a nasty cough", "coughing"),
    "HP:0002094": _p("breathlessness", "I get out of breath easily", ""),
    "HP:0100749": _p("chest pain", "my chest aches", ""),
    "HP:0031417": _p("a runny nose", "my nose keeps running", ""),
    "HP:0001742": _p("a blocked nose", "my nose is stuffed up", ""),
    "HP:0033050": _p("a sore throat", "it hurts to swallow", ""),
    "HP:0012378": _p("fatigue|tiredness", "I'm tired all the time", ""),
    "HP:0002321": _p("dizziness", "I feel dizzy", ""),
    "HP:0003418": _p("back pain", "my lower back is sore", ""),
    "HP:0002829": _p("joint pain", "my joints ache", ""),
    "HP:0003326": _p("muscle pain", "my muscles ache", ""),
    "HP:0000988": _p("a rash", "I broke out in a rash", ""),
    "HP:0000989": _p("itching", "my skin itches", "itching"),
    "HP:0004396": _p("a poor appetite", "I've lost my appetite", ""),
    "HP:0001824": _p("weight loss", "I've been losing weight", ""),
    "HP:0100518": _p("pain when urinating", "it stings when I pee", ""),
    "HP:0030766": _p("an earache", "my ear is sore", ""),
    "HP:0000458": _p("loss of smell", "I can't smell things", ""),
    "HP:0003401": _p("tingling", "my hands tingle", ""),
    "HP:0001962": _p("palpitations", "my heart is racing", ""),
    "HP:0002019": _p("constipation", "I haven't been able to poop", ""),
    "HP:0100785": _p("insomnia", "I can't fall asleep", ""),
    "HP:0000975": _p("heavy sweating", "I sweat a lot", "sweating"),
    "HP:0030828": _p("wheezing", "I wheeze when I breathe", "wheezing"),
    "NUI:sneezing": _p("sneezing fits", "I sneeze all day", "sneezing"),
    "HP:0000622": _p("blurry eyesight", "things look blurry", ""),
    "HP:0000739": _p("anxiety", "I feel anxious", ""),
    "HP:0001279": _p("a fainting spell", "I fainted", "fainting"),
}

EVAL: dict[str, Phrasings] = {
    "HP:0002315": _p("a splitting headache|a migraine-like head pain|pain in my head",
                     "my head is pounding|my head is killing me|I have a throbbing head", ""),
    "HP:0001945": _p("a temperature|fevers|a high temp",
                     "I feel hot and feverish|I've had a temperature of 39", ""),
    "HP:0002013": _p("throwing up|vomiting spells",
                     "I can't keep food down|I keep being sick|I threw up twice", "throwing up|puking"),
    "HP:0002018": _p("nausea|queasiness", "I feel sick to my stomach|I feel like I'm going to be sick", ""),
    "HP:0002014": _p("diarrhoea|watery poo", "my stools are watery|I keep running to the toilet", ""),
    "HP:0002027": _p("stomach cramps|belly ache|pain in my stomach",
                     "my stomach is killing me|my belly hurts", ""),
    "HP:0012735": _p("a hacking cough|a chesty cough|coughing fits", "I can't stop coughing", "coughing"),
    "HP:0002094": _p("shortness of breath|trouble breathing", "I can't catch my breath|I get winded on the stairs",
                     ""),
    "HP:0100749": _p("chest pains|tightness in my chest", "my chest feels tight|it hurts in my chest", ""),
    "HP:0031417": _p("a drippy nose|runny nose", "my nose won't stop running", ""),
    "HP:0001742": _p("a stuffy nose|congestion", "I can't breathe through my nose", ""),
    "HP:0033050": _p("a scratchy throat|throat pain", "my throat is killing me|my throat is sore", ""),
    "HP:0012378": _p("exhaustion|no energy", "I'm worn out|I feel drained all the time", ""),
    "HP:0002321": _p("dizzy spells|vertigo", "the room is spinning|I feel dizzy when I stand up", ""),
    "HP:0003418": _p("a backache|lower back pain", "my back is killing me", ""),
    "HP:0002829": _p("achy joints|sore knees", "my knees and elbows hurt", ""),
    "HP:0003326": _p("body aches|aching muscles", "I ache all over", ""),
    "HP:0000988": _p("a red rash|spots on my skin", "I have a rash on my arms", ""),
    "HP:0000989": _p("itchy skin|an itch", "I'm itching all over", "scratching"),
    "HP:0004396": _p("no appetite|loss of appetite", "I don't feel like eating|I'm not hungry", ""),
    "HP:0001824": _p("weight loss", "I've lost a lot of weight", ""),
    "HP:0100518": _p("burning when I pee|painful urination", "it burns when I pee", ""),
    "HP:0030766": _p("ear pain|an earache", "my ear hurts", ""),
    "HP:0000458": _p("no sense of smell", "I lost my sense of smell", ""),
    "HP:0003401": _p("pins and needles|tingling in my feet", "my fingers feel tingly", ""),
    "HP:0001962": _p("a pounding heart|heart flutters", "my heart keeps skipping beats", ""),
    "HP:0002019": _p("constipation", "I'm constipated", ""),
    "HP:0100785": _p("trouble sleeping|sleepless nights", "I lie awake all night", ""),
    "HP:0000975": _p("sweating too much|drenching sweats", "I'm sweating buckets", "sweating"),
    "HP:0030828": _p("a wheeze", "I'm wheezy", "wheezing"),
    "NUI:sneezing": _p("sneezing", "I keep sneezing", "sneezing"),
    "HP:0000622": _p("blurred vision|blurry vision", "my vision is blurry", ""),
    "HP:0000739": _p("anxiety|panic", "I feel nervous all the time", ""),
    "HP:0001279": _p("blackouts", "I passed out|I blacked out yesterday", "fainting"),
    "HP:0000360": _p("ringing in my ears|a buzzing in my ears", "my ears are ringing", ""),
    "HP:0001337": _p("shaky hands|trembling", "my hands shake", "shaking"),
    "HP:0002015": _p("trouble swallowing", "food gets stuck when I swallow", ""),
    "HP:0001596": _p("hair loss", "my hair is falling out", ""),
    "HP:0000421": _p("nosebleeds", "my nose keeps bleeding", ""),
    "HP:0001609": _p("a hoarse voice", "I'm losing my voice", ""),
}

# Clauses that mention no symptom (context people add): the matcher must leave them unmatched, which is
# what makes the threshold a trade-off. Separate lists for tuning and evaluation.
TUNE_DISTRACTORS: tuple[str, ...] = (
    "I work from home", "my daughter had the same thing", "I took two aspirin", "I'm 45 years old",
    "it started after dinner", "I just got back from holiday", "I drink a lot of coffee", "I have a dog",
    "the pharmacy was closed", "I'm allergic to penicillin",
)
EVAL_DISTRACTORS: tuple[str, ...] = (
    "I work night shifts", "my son was ill last week", "I tried some paracetamol", "I'm 34",
    "it began after a long flight", "we just moved house", "I'm pregnant", "I ran a marathon on Sunday",
    "my wife thinks I should see someone", "I had my flu jab in October", "I've been travelling in Spain",
    "I'm on blood pressure tablets",
)

