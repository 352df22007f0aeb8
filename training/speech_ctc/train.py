"""Train the speech CTC model with synchronous data-parallel SGD (DDP) on 1..N GPUs or CPU processes.

    torchrun --nproc_per_node=2 -m training.speech_ctc --recipe training/speech_ctc/recipes/small.yaml \
        data.train_manifest=data/speech/train.jsonl data.dev_manifest=data/speech/dev.jsonl
    nui train speech --nproc 2 --recipe ... (the same, launched for you)

Writes `<run.out_dir>/checkpoints/step_N/` (exact resume), TensorBoard logs in `<out_dir>/tb`,
per-epoch dev WER/CER in `<out_dir>/metrics.json` and `<out_dir>/curves.png` (rewritten every epoch).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from models.ctc_text import greedy_decode
from models.speech_ctc import SpeechCTC, build
from training.common import amp, checkpoint, distributed
from training.common.config import to_dict
from training.common.launch import recipe_main
from training.common.loop import LoopSettings, checkpoint_saver, run_epochs, tensorboard_writer
from training.common.optim import make_optimizer
from training.common.plots import write_report
from training.speech_ctc.augment import AugmentSection, augment_features
from training.speech_ctc.dataset import Batch, BucketBatchSampler, SpeechDataset, collate, filter_trainable
from training.speech_ctc.manifest import Utterance, read_manifest, seeded_sample
from training.speech_ctc.model_io import MODEL_NAME
from training.speech_ctc.recipe import TrainConfig

logger = logging.getLogger(__name__)


class AugmentedForward(torch.nn.Module):
    """The model's forward with feature augmentation between `features` and `encode`, applied from outside
    the model (and wrapped by DDP as a whole). Set `rng` before each step; None: plain forward."""

    def __init__(self, model: SpeechCTC, augment: AugmentSection) -> None:
        super().__init__()
        self.model = model
        self.augment = augment
        self.rng: np.random.Generator | None = None

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = self.model.features(audio, audio_lengths)
        if self.rng is not None:
            feats = augment_features(feats, lengths, self.augment, self.rng)
        out: tuple[torch.Tensor, torch.Tensor] = self.model.encode(feats, lengths)
        return out


@torch.no_grad()
def evaluate(model: SpeechCTC, utts: list[Utterance], device: torch.device, batch_size: int) -> dict[str, float]:
    """Greedy-decoding WER/CER (jiwer) on `utts`, FP32 as exported."""
    model.eval()
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration_s)
    ds = SpeechDataset([utts[i] for i in order])
    refs, hyps = [], []
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate):
        log_probs, lengths = model(batch.audio.to(device), batch.audio_lengths.to(device))
        lp = log_probs.cpu().numpy()
        for i, n in enumerate(lengths.tolist()):
            hyps.append(greedy_decode(lp[i, :n]))
        refs.extend(batch.texts)
    model.train()
    # jiwer rejects empty references; a hypothesis may be empty.
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "n": float(len(refs))}


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
             device: torch.device, deterministic: bool) -> torch.Tensor:
    """FP32 CTC loss, mean over the batch, on `device`. CUDA's CTC backward has no deterministic kernel
    (torch refuses it in deterministic mode), so a deterministic run on a GPU computes the loss on the CPU:
    the log-probs go over, the gradient comes back."""
    where = torch.device("cpu") if deterministic and device.type == "cuda" else device
    loss = F.ctc_loss(log_probs.float().transpose(0, 1).to(where), targets.to(where), out_lengths.to(where),
                      target_lengths.to(where), blank=0, reduction="mean", zero_infinity=True)
    return loss.to(device)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the run folder."""
    info = distributed.init_distributed(cfg.run.device)
    distributed.seed_everything(cfg.run.seed, cfg.run.deterministic)
    run_dir = Path(cfg.run.out_dir)
    model_cfg = cfg.model.build_config()
    model = build(model_cfg).to(info.device)
    optimizer = make_optimizer(model, cfg.optim)
    amp_mode = amp.resolve_amp(cfg.run.amp, info.device)
    scaler = amp.make_scaler(amp_mode, info.device)

    train_utts = filter_trainable(read_manifest(Path(cfg.data.train_manifest)), cfg.data.max_duration_s,
                                  1.0 / model_cfg.frame_s)
    dev_utts = read_manifest(Path(cfg.data.dev_manifest)) if cfg.data.dev_manifest else []
    dev_utts = seeded_sample(dev_utts, cfg.data.dev_limit, cfg.run.seed)
    dataset = SpeechDataset(train_utts, cfg.augment, cfg.run.seed)
    durations = [u.duration_s for u in train_utts]
    steps_per_epoch = len(train_utts) // (cfg.data.batch_size * info.world_size)

    state = checkpoint.resume(run_dir, model=model, optimizer=optimizer, scaler=scaler, enabled=cfg.run.resume,
                              log=info.is_main)
    if state.step == 0 and cfg.model.init_from:
        weights, _, source = checkpoint.read_model_weights(Path(cfg.model.init_from), MODEL_NAME)
        model.load_state_dict(weights)
        if info.is_main:
            logger.info("initialised from %s (fine-tuning)", source)
    recipe = to_dict(cfg)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("model %s: %.2fM parameters; %d train utterances (%.1f h), %d dev; %d ranks on %s; "
                    "amp=%s; %d steps/epoch", cfg.model.preset, n_params / 1e6, len(train_utts),
                    sum(durations) / 3600, len(dev_utts), info.world_size, info.device, amp_mode, steps_per_epoch)
    augmented = AugmentedForward(model, cfg.augment)
    ddp: torch.nn.Module = (DistributedDataParallel(augmented) if info.world_size > 1 else augmented)

    writer = tensorboard_writer(info, run_dir)

    save = checkpoint_saver(info, run_dir, model=model, model_name=MODEL_NAME, model_config=model_cfg.to_dict(),
                            optimizer=optimizer, state=state, scaler=scaler, recipe=recipe)

    def epoch_batches(epoch: int, start_batch: int) -> DataLoader[Any]:
        sampler = BucketBatchSampler(durations, cfg.data.batch_size, info.rank, info.world_size, cfg.run.seed,
                                     epoch, cfg.run.sortagrad, start_batch=start_batch)
        dataset.set_epoch(epoch)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
                          persistent_workers=False)

    def loss_of(batch: Batch) -> tuple[torch.Tensor, float]:
        if cfg.augment.changes_features:
            augmented.rng = np.random.default_rng([cfg.run.seed, state.step, info.rank])
        with amp.autocast(amp_mode, info.device):
            log_probs, out_lengths = ddp(batch.audio.to(info.device), batch.audio_lengths.to(info.device))
        loss = ctc_loss(log_probs, out_lengths, batch.targets, batch.target_lengths, info.device,
                        cfg.run.deterministic)
        return loss, float(batch.audio_lengths.sum()) / model_cfg.sample_rate_hz  # audio seconds

    def end_of_epoch() -> None:
        if not (info.is_main and dev_utts):
            return
        metrics = evaluate(model, dev_utts, info.device, cfg.data.batch_size)
        state.history.append({"epoch": state.epoch, "step": state.step, **metrics})
        logger.info("epoch %d: dev WER %.2f%% CER %.2f%% (%d utterances)", state.epoch,
                    100 * metrics["wer"], 100 * metrics["cer"], int(metrics["n"]))
        if writer is not None:
            writer.add_scalar("dev/wer", metrics["wer"], state.step)
            writer.add_scalar("dev/cer", metrics["cer"], state.step)
        if state.best_score is None or metrics["wer"] < state.best_score:
            state.best_score = metrics["wer"]
        write_report(run_dir, state.history, state.step, ["wer", "cer"], f"speech_ctc {cfg.model.preset}")

    model.train()
    loop = LoopSettings.from_run(cfg.run, steps_per_epoch, "audio_s_per_s")
    run_epochs(state, loop=loop, info=info, model=model, optimizer=optimizer, scaler=scaler, optim=cfg.optim,
               epoch_batches=epoch_batches, loss_of=loss_of, end_of_epoch=end_of_epoch, save=save, writer=writer)
    if writer is not None:
        writer.close()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    return recipe_main(argv, prog="python -m training.speech_ctc", description=__doc__, config_cls=TrainConfig,
                       train=train)
