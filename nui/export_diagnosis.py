"""`nui export diagnosis` and `nui eval dialog`: glue between training/ (checkpoint, knowledge base,
synthetic patients) and engines/ + models/diagnosis_dialog (export, dialog), which must not import training.

    nui export diagnosis --checkpoint runs/diagnosis_small --data data/diagnosis --repo model_repository \
        [--weights-dtype float16|float32] [--version N] [--dev-limit 2000] [--precision fp16]
    nui eval dialog --repo model_repository --data data/diagnosis [--split test] [--patients 500] \
        [--max-turns 20] [--posterior model|kb|mix] [--out docs/diagnosis/dialog_sim.json]

The export gates on the dev patients (all findings shown) and publishes the engine with the knowledge
tables. The dialog simulation runs the *exported* engine (ONNX Runtime), so it measures what is served.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from engines.engine import load_engine
from engines.export_diagnosis import DEFAULT_ATOL, ParityError, export_diagnosis
from engines.fp16 import Fp16GateError, fp32_staging, island_summary, publish_fp16
from engines.fp16_parity import diagnosis_check
from engines.manifest import sha256_file
from engines.tensorrt_build import publish_tensorrt
from engines.torch_build import publish_torch
from models.diagnosis_dialog import (
    DiagnosisTables,
    DiseaseInfo,
    SymptomInfo,
    answer_model,
    kb_posterior,
    simulate,
)
from nui.engine_options import add_engine_options, check_engine_options
from training.diagnosis.knowledge import KnowledgeBase
from training.diagnosis.model_io import load_model
from training.diagnosis.patients import Patients

logger = logging.getLogger(__name__)


def tables_from_kb(kb: KnowledgeBase) -> DiagnosisTables:
    return DiagnosisTables(
        diseases=[DiseaseInfo(id=d.id, name=d.name, icd10=d.icd10, xrefs=d.xrefs) for d in kb.diseases],
        symptoms=[SymptomInfo(id=s.id, name=s.name, lay_names=s.lay_names, synonyms=s.synonyms, sex=s.sex)
                  for s in kb.symptoms],
        probabilities=kb.probability_matrix())


def patient_inputs(p: Patients, rows: np.ndarray, n_symptoms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (p.dense(rows, n_symptoms).astype(np.float32), p.age_years[rows].astype(np.float32),
            p.sex[rows].astype(np.int64))


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui export diagnosis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder, checkpoint folder or file")
    p.add_argument("--data", type=Path, required=True, help="knowledge base + patients (nui data diagnosis)")
    p.add_argument("--repo", type=Path, required=True, help="model repository folder")
    p.add_argument("--model-name", default="diagnosis")
    p.add_argument("--version", type=int, default=None, help="default: next free version")
    p.add_argument("--weights-dtype", choices=sorted(DEFAULT_ATOL), default="float16")
    p.add_argument("--atol", type=float, default=None, help="default: per weights dtype (engines.export_diagnosis)")
    p.add_argument("--dev-limit", type=int, default=2000, help="dev patients in the parity gate")
    add_engine_options(p, ["fp32", "fp16"],
                       "fp16: FP16 graph with FP32 islands (engines/fp16.py), gated against the FP32 engine (top-5 "
                       "agreement, probabilities); --weights-dtype is then float32 for the FP32 step")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_engine_options(args)
        model, weights = load_model(args.checkpoint)
        kb = KnowledgeBase.load(args.data)
        if model.cfg.kb_fingerprint and model.cfg.kb_fingerprint != kb.fingerprint():
            raise ValueError(f"{args.checkpoint} was trained on another knowledge base than {args.data}")
        dev = Patients.load(args.data / "patients_dev.npz")
        rows = np.arange(min(args.dev_limit, len(dev)))
        dev_inputs = patient_inputs(dev, rows, model.cfg.n_symptoms)
        common = dict(dev_inputs=dev_inputs, atol=args.atol, source_checkpoint_sha256=sha256_file(weights),
                      extras={"kb_fingerprint": kb.fingerprint()})
        if args.engine == "torch":
            with fp32_staging() as stage:
                onnx_dir, _ = export_diagnosis(model, tables_from_kb(kb), stage, args.model_name,
                                               weights_dtype="float32", **common)
                evidence, age, sex = (x[:256] for x in dev_inputs)
                path, manifest = publish_torch(onnx_dir, model, args.repo, args.model_name, args.version,
                                               precision=args.precision,
                                               feeds={None: [{"evidence": evidence, "age_years": age, "sex": sex}]})
        elif args.precision == "fp16":
            with fp32_staging() as fp32_repo:
                fp32_dir, _ = export_diagnosis(model, tables_from_kb(kb), fp32_repo, args.model_name,
                                               weights_dtype="float32", **common)
                fp16_repo = fp32_repo / "fp16" if args.engine == "tensorrt" else args.repo
                path, manifest = publish_fp16(fp32_dir, fp16_repo, args.model_name,
                                              args.version if fp16_repo == args.repo else None,
                                              *diagnosis_check(*dev_inputs))
                if args.engine == "tensorrt":
                    path, manifest = publish_tensorrt(path, args.repo, args.model_name, args.version,
                                                      timing_cache=args.timing_cache)
            print("\n".join(island_summary(manifest)))
        else:
            path, manifest = export_diagnosis(model, tables_from_kb(kb), args.repo, args.model_name, args.version,
                                              weights_dtype=args.weights_dtype, **common)
    except (OSError, ValueError, ParityError, Fp16GateError) as e:
        print(f"nui export diagnosis: {e}", file=sys.stderr)
        return 1
    print(f"published {path} ({manifest.extras['size_bytes'] / 1e6:.2f} MB; parity: {manifest.parity})")
    return 0


def dialog_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval dialog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--model-name", default="diagnosis")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--patients", type=int, default=500, help="first N patients of the split")
    p.add_argument("--max-turns", type=int, default=20)
    p.add_argument("--start-findings", type=int, default=2, help="each dialog starts from 1..N present findings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--posterior", choices=["model", "kb", "mix"], default="model",
                   help="what ranks the diseases each turn: the exported model (what is served), naive Bayes "
                        "on the knowledge tables, or their geometric mean (for comparison)")
    p.add_argument("--lookahead", type=int, default=0,
                   help="re-score the best N questions by re-running the model on both answers (0: KB only)")
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(args.repo, args.model_name, intra_op_threads=args.threads)
        folder = args.repo / args.model_name / str(engine.version)
        tables = DiagnosisTables.load(folder)
        patients = Patients.load(args.data / f"patients_{args.split}.npz")
    except (OSError, ValueError) as e:
        print(f"nui eval dialog: {e}", file=sys.stderr)
        return 1
    rows = np.arange(min(args.patients, len(patients)))
    truth, age, sex = patient_inputs(patients, rows, len(tables.symptoms))
    keep = (truth > 0).any(axis=1)  # a dialog needs at least one present finding to start from

    answers = answer_model(tables.probabilities)

    def posterior(evidence: np.ndarray, age_years: np.ndarray, sex_codes: np.ndarray) -> np.ndarray:
        if args.posterior == "kb":
            return kb_posterior(evidence, answers)
        probs = engine.run({"evidence": evidence, "age_years": age_years, "sex": sex_codes})["probs"]
        if args.posterior == "model":
            return probs
        log_p = 0.5 * np.log(np.maximum(probs, 1e-30)) + 0.5 * np.log(np.maximum(kb_posterior(evidence, answers),
                                                                                     1e-30))
        mixed = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        return mixed / mixed.sum(axis=1, keepdims=True)

    result = simulate(posterior, answers, truth[keep], patients.disease[rows][keep],
                      age[keep], sex[keep], max_turns=args.max_turns, start_findings=args.start_findings,
                      seed=args.seed, symptom_sex=tables.symptom_sex, lookahead=args.lookahead)
    summary = {"engine": f"{engine.name} v{engine.version}", "split": args.split, "posterior": args.posterior,
               "answer_model": "kb", "lookahead": args.lookahead, "start_findings": f"1..{args.start_findings}",
               **result.summary()}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0
