"""Train the symptom-checker model with synchronous data-parallel SGD (DDP) on 1..N GPUs or CPU processes.

    torchrun --nproc_per_node=2 -m training.diagnosis --recipe training/diagnosis/recipes/small.yaml
    nui train diagnosis --nproc 2 --recipe training/diagnosis/recipes/small.yaml [key=value ...]

Reads the knowledge base and patients_{train,dev}.npz from `data.dir` (written by `nui data diagnosis`);
the epochs run on the shared loop (training/common/loop.py), this module supplies the masked batches,
the loss, the dev metrics and the temperature fit.
Writes `<run.out_dir>/checkpoints/step_N/` (exact resume), TensorBoard logs in `<out_dir>/tb`, per-epoch
dev metrics in `<out_dir>/metrics.json` and `<out_dir>/curves.png`. After the last epoch the softmax
temperature is fitted on the dev patients (run.calibrate) and saved inside the model's weights when it
lowers the dev ECE (mean of all findings shown and half of them hidden). Rerunning a finished run
only redoes that calibration.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from models.diagnosis import DiagnosisModel, build
from models.diagnosis_dialog import answer_model
from training.common import amp, checkpoint, distributed
from training.common.config import to_dict
from training.common.launch import recipe_main
from training.common.loop import LoopSettings, checkpoint_saver, run_epochs, shuffled_batches, tensorboard_writer
from training.common.optim import make_optimizer
from training.common.plots import write_report
from training.diagnosis.dataset import Batch, QuestionTable, make_batch
from training.diagnosis.knowledge import KnowledgeBase
from training.diagnosis.metrics import classification_metrics, fit_temperature, log_softmax, nll, reliability
from training.diagnosis.model_io import MODEL_NAME, predict_logits
from training.diagnosis.patients import Patients, hide_share
from training.diagnosis.recipe import TrainConfig

logger = logging.getLogger(__name__)

METRICS = ["top1", "top5"]  # plotted per epoch; the first marks an epoch's entry in the run history
CALIBRATION_HIDDEN_SHARE = 0.5  # the second regime the temperature is judged on (as in evaluate.py's table)


def load_split(data_dir: Path, split: str, kb: KnowledgeBase, limit: int = 0) -> Patients:
    """A split's patients, after checking they were drawn from this knowledge base."""
    meta = data_dir / "patients.json"
    if meta.is_file():
        drawn_from = json.loads(meta.read_text()).get("kb_fingerprint")
        if drawn_from != kb.fingerprint():
            raise ValueError(f"{data_dir}: the patients were drawn from another knowledge base; rerun "
                             f"`nui data diagnosis --out {data_dir} --patients-only`")
    p = Patients.load(data_dir / f"patients_{split}.npz")
    if limit and limit < len(p):
        end = int(p.indptr[limit])
        p = Patients(disease=p.disease[:limit], age_years=p.age_years[:limit], sex=p.sex[:limit],
                     indptr=p.indptr[: limit + 1], symptom=p.symptom[:end], value=p.value[:end])
    return p


def dev_metrics(model: DiagnosisModel, dev: Patients, device: torch.device) -> dict[str, float]:
    logits = predict_logits(model, dev, device=device)
    return classification_metrics(logits, dev.disease.astype(np.int64), dev.n_positive())


def calibrate(model: DiagnosisModel, dev: Patients, device: torch.device) -> dict[str, float]:
    """Fit the temperature on dev (minimum NLL with every finding shown, from T = 1) and keep it in the model
    if it lowers the dev ECE averaged over every finding shown and CALIBRATION_HIDDEN_SHARE of them hidden
    (a dialog in progress sees partial evidence; there the network tends to be under-confident, while the
    NLL optimum can cost a little ECE with full evidence)."""
    model.temperature.fill_(1.0)
    targets = dev.disease.astype(np.int64)
    logits = predict_logits(model, dev, device=device)
    partial = predict_logits(model, hide_share(dev, CALIBRATION_HIDDEN_SHARE, seed=0), device=device)
    fitted = fit_temperature(logits, targets)

    def ece(t: float) -> list[float]:
        return [reliability(np.exp(log_softmax(x / t)), targets).ece for x in (logits, partial)]

    before, after = ece(1.0), ece(fitted)
    kept = fitted if np.mean(after) < np.mean(before) else 1.0
    model.temperature.fill_(kept)
    return {"temperature": kept, "fitted_temperature": fitted, "dev_ece_before": before[0], "dev_ece_fitted": after[0],
            "dev_ece_hidden_before": before[1], "dev_ece_hidden_fitted": after[1],
            "dev_nll_before": nll(logits, targets), "dev_nll_fitted": nll(logits / fitted, targets)}


@torch.no_grad()
def init_naive_bayes(model: DiagnosisModel, probabilities: np.ndarray) -> None:
    """Wide path = naive Bayes over the KB table (answers as models.diagnosis_dialog floors them), MLP
    output = 0: the untrained model ranks like naive Bayes, training learns what it misses. A resumed run
    overwrites this with its checkpoint."""
    if model.wide is None:
        raise ValueError("model.init_wide=naive_bayes needs a model with the wide path (wide: true)")
    q = torch.from_numpy(answer_model(probabilities).q).float()  # (D, S)
    model.wide.weight.copy_(torch.cat([q.log(), torch.log1p(-q)], dim=1))  # (D, 2 S): [present | absent]
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the run folder."""
    info = distributed.init_distributed(cfg.run.device)
    distributed.seed_everything(cfg.run.seed, cfg.run.deterministic)
    run_dir = Path(cfg.run.out_dir)
    data_dir = Path(cfg.data.dir)
    kb = KnowledgeBase.load(data_dir)
    train_p = load_split(data_dir, "train", kb, cfg.data.train_limit)
    dev_p = load_split(data_dir, "dev", kb, cfg.data.dev_limit)
    questions = QuestionTable.from_probabilities(kb.probability_matrix()) if cfg.masking.dialog_share > 0 else None
    model_cfg = cfg.model.build_config(kb.n_symptoms, kb.n_diseases, kb.fingerprint())
    model = build(model_cfg)
    if cfg.model.init_wide == "naive_bayes":
        init_naive_bayes(model, kb.probability_matrix())
    model = model.to(info.device)
    optimizer = make_optimizer(model, cfg.optim)
    amp_mode = amp.resolve_amp(cfg.run.amp, info.device)
    scaler = amp.make_scaler(amp_mode, info.device)
    steps_per_epoch = len(train_p) // (cfg.data.batch_size * info.world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_p)} training patients make no batch of {cfg.data.batch_size} x "
                         f"{info.world_size} ranks")

    state = checkpoint.resume(run_dir, model=model, optimizer=optimizer, scaler=scaler, enabled=cfg.run.resume,
                              log=info.is_main)
    recipe = to_dict(cfg)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("model %s: %.2fM parameters, %d symptoms -> %d diseases; %d train / %d dev patients; "
                    "%d ranks on %s; amp=%s; %d steps/epoch", cfg.model.preset, n_params / 1e6, kb.n_symptoms,
                    kb.n_diseases, len(train_p), len(dev_p), info.world_size, info.device, amp_mode,
                    steps_per_epoch)
    ddp: torch.nn.Module = DistributedDataParallel(model) if info.world_size > 1 else model

    title = f"diagnosis {cfg.model.preset}"
    writer = tensorboard_writer(info, run_dir)

    save = checkpoint_saver(info, run_dir, model=model, model_name=MODEL_NAME, model_config=model_cfg.to_dict(),
                            optimizer=optimizer, state=state, scaler=scaler, recipe=recipe)

    def epoch_batches(epoch: int, start_batch: int) -> Iterator[Batch]:
        # masks drawn per (seed, epoch, batch, rank): a resumed epoch sees exactly the batches it would have
        rows = shuffled_batches(len(train_p), cfg.data.batch_size, info.rank, info.world_size, cfg.run.seed, epoch)
        for bi in range(start_batch, len(rows)):
            rng = np.random.default_rng([cfg.run.seed, epoch, bi, info.rank])
            yield make_batch(train_p, np.asarray(rows[bi]), kb.n_symptoms, cfg.masking, rng, questions)

    def loss_of(batch: Batch) -> tuple[torch.Tensor, int]:
        batch = batch.to(info.device)
        with amp.autocast(amp_mode, info.device):
            logits = ddp(batch.evidence, batch.age_years, batch.sex)
        return F.cross_entropy(logits.float(), batch.disease), len(batch.disease)

    def end_of_epoch() -> None:
        if not (info.is_main and len(dev_p)):
            return
        m = dev_metrics(model, dev_p, info.device)
        state.history.append({"epoch": state.epoch, "step": state.step, **m})
        logger.info("epoch %d: dev top-1 %.2f%% top-5 %.2f%% (>=3 present: top-5 %.2f%%) NLL %.3f "
                    "ECE %.2f%% (%d patients)", state.epoch, 100 * m["top1"], 100 * m["top5"],
                    100 * m["top5_ge3"], m["nll"], 100 * m["ece"], int(m["n"]))
        if writer is not None:
            for k in ("top1", "top5", "nll", "ece"):
                writer.add_scalar(f"dev/{k}", m[k], state.step)
        if state.best_score is None or m["top1"] > state.best_score:
            state.best_score = m["top1"]
        write_report(run_dir, state.history, state.step, METRICS, title)

    model.train()
    loop = LoopSettings.from_run(cfg.run, steps_per_epoch, "patients_per_s")
    finished = run_epochs(state, loop=loop, info=info, model=model, optimizer=optimizer, scaler=scaler,
                          optim=cfg.optim, epoch_batches=epoch_batches, loss_of=loss_of, end_of_epoch=end_of_epoch,
                          save=save, writer=writer)
    if finished and cfg.run.calibrate:
        if info.is_main and len(dev_p):
            c = calibrate(model, dev_p, info.device)
            entry = {"calibration": True, "step": state.step, **c}
            state.history.append(entry)
            logger.info("temperature %.3f fitted on dev: NLL %.3f -> %.3f, ECE %.2f%% -> %.2f%% (%d%% of findings "
                        "hidden: %.2f%% -> %.2f%%); kept T = %.3f", c["fitted_temperature"], c["dev_nll_before"],
                        c["dev_nll_fitted"], 100 * c["dev_ece_before"], 100 * c["dev_ece_fitted"],
                        100 * CALIBRATION_HIDDEN_SHARE, 100 * c["dev_ece_hidden_before"],
                        100 * c["dev_ece_hidden_fitted"], c["temperature"])
            write_report(run_dir, state.history, state.step, METRICS, title, extra={"calibration": entry})
        save()
    if writer is not None:
        writer.close()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    return recipe_main(argv, prog="python -m training.diagnosis", description=__doc__, config_cls=TrainConfig,
                       train=train)
