"""Train the captioner with synchronous data-parallel SGD (DDP) on 1..N GPUs or CPU processes.

    torchrun --nproc_per_node=2 -m training.captioner --recipe training/captioner/recipes/small.yaml
    nui train captioner --nproc 2 --recipe training/captioner/recipes/small.yaml [key=value ...]

Reads COCO-captions JSON from `data.dir` (`nui data captions` or `nui data coco`). Trains the word
tokenizer on the training captions first (`<out_dir>/tokenizer.json`, reused on resume), then the
model with teacher forcing and label-smoothed cross-entropy. With a frozen encoder the encoder runs
once per image (`data.cache_features`, see dataset.py). After every epoch: greedy captions of the val
images scored with BLEU-4 and CIDEr (pycocoevalcap).

Writes `<out_dir>/tokenizer.json`, `<out_dir>/checkpoints/step_N/` (weights + config + tokenizer.json;
exact resume), TensorBoard logs in `<out_dir>/tb`, `<out_dir>/metrics.json` and `<out_dir>/curves.png`
(rewritten every epoch).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from models.caption_text import PAD, CaptionTokenizer, train_tokenizer
from models.captioner import Captioner, build, load_pretrained_encoder
from training.captioner.coco import CaptionedImage, read_coco
from training.captioner.dataset import CaptionPairs, cached_features, feature_view, load_image
from training.captioner.metrics import caption_scores, greedy_decode
from training.captioner.model_io import MODEL_NAME, TOKENIZER_FILE
from training.captioner.recipe import TrainConfig
from training.common import amp, checkpoint, distributed
from training.common.config import to_dict
from training.common.launch import recipe_main
from training.common.loop import LoopSettings, checkpoint_saver, run_epochs, shuffled_batches, tensorboard_writer
from training.common.optim import make_optimizer
from training.common.plots import write_report

logger = logging.getLogger(__name__)


def load_items(data_dir: Path, name: str, limit: int) -> list[CaptionedImage]:
    items = read_coco(data_dir / name)
    return items[:limit] if limit else items


def get_tokenizer(run_dir: Path, train_items: list[CaptionedImage], min_count: int, max_vocab: int,
                  info: distributed.DistInfo) -> CaptionTokenizer:
    """The run's tokenizer: trained on the training captions by rank 0 on a fresh run, reused on resume."""
    path = run_dir / TOKENIZER_FILE
    if info.is_main and not path.is_file():
        tok = train_tokenizer((c for it in train_items for c in it.captions), min_count, max_vocab or None)
        tok.save(path)
    distributed.barrier()
    return CaptionTokenizer.from_file(path)


@torch.no_grad()
def caption_inputs(model: Captioner, inputs: torch.Tensor | np.ndarray, max_len: int, batch_size: int,
                   device: torch.device) -> list[list[int]]:
    """Greedy token ids for every row of `inputs` (images or cached features), in batches."""
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(inputs), batch_size):
        chunk = torch.as_tensor(np.asarray(inputs[start:start + batch_size], dtype=np.float32)).to(device)
        out.extend(greedy_decode(model, chunk, max_len))
    model.train(was_training)
    return out


def validate(model: Captioner, items: list[CaptionedImage], features: np.ndarray | None, tokenizer: CaptionTokenizer,
             device: torch.device, batch_size: int) -> tuple[dict[str, float], list[str]]:
    """Greedy-decoding BLEU/CIDEr on `items` (FP32, as exported) and the hypotheses."""
    inputs = features if features is not None else torch.stack(
        [load_image(it.path, model.cfg.image_size_px) for it in items])
    ids = caption_inputs(model, inputs, model.cfg.max_len, batch_size, device)
    hyps = [tokenizer.decode(row) for row in ids]
    return caption_scores([it.captions for it in items], hyps), hyps


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the run folder."""
    info = distributed.init_distributed(cfg.run.device)
    distributed.seed_everything(cfg.run.seed, cfg.run.deterministic)
    run_dir = Path(cfg.run.out_dir)
    data_dir = Path(cfg.data.dir)
    train_items = load_items(data_dir, cfg.data.train_file, cfg.data.train_limit)
    val_items = load_items(data_dir, cfg.data.val_file, cfg.data.val_limit) if cfg.data.val_file else []
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    tokenizer = get_tokenizer(run_dir, train_items, cfg.data.min_word_count, cfg.data.max_vocab, info)
    model_cfg = cfg.model.build_config(tokenizer.vocab_size)
    model = build(model_cfg)
    if cfg.model.pretrained_encoder and model_cfg.encoder == "efficientnet_lite0":
        load_pretrained_encoder(model)
    model.to(info.device)
    optimizer = make_optimizer(model, cfg.optim)
    amp_mode = amp.resolve_amp(cfg.run.amp, info.device)
    scaler = amp.make_scaler(amp_mode, info.device)
    steps_per_epoch = len(train_items) // (cfg.data.batch_size * info.world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_items)} training images make no batch of {cfg.data.batch_size} x "
                         f"{info.world_size} ranks")
    state = checkpoint.resume(run_dir, model=model, optimizer=optimizer, scaler=scaler, enabled=cfg.run.resume,
                              log=info.is_main)

    use_features = cfg.data.cache_features and model_cfg.freeze_encoder
    train_feats = val_feats = None
    if use_features:
        cache = run_dir / "features"
        train_feats = cached_features(model, train_items, cache, "train", info)
        val_feats = cached_features(model, val_items, cache, "val", info) if val_items else None
    net = feature_view(model) if use_features else model
    dataset = CaptionPairs(train_items, tokenizer, model_cfg.max_len, model_cfg.image_size_px, cfg.run.seed,
                           train_feats)
    recipe = to_dict(cfg)
    if info.is_main:
        (run_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("model %s: %.2fM parameters (%.2fM trained), vocabulary %d; %d train / %d val images; "
                    "%d ranks on %s; amp=%s; %d steps/epoch; %s", cfg.model.preset, n_params / 1e6, n_train / 1e6,
                    tokenizer.vocab_size, len(train_items), len(val_items), info.world_size, info.device,
                    amp_mode, steps_per_epoch, "cached encoder features" if use_features else "images")
    ddp: torch.nn.Module = DistributedDataParallel(net) if info.world_size > 1 else net

    writer = tensorboard_writer(info, run_dir)

    save = checkpoint_saver(info, run_dir, model=model, model_name=MODEL_NAME, model_config=model_cfg.to_dict(),
                            optimizer=optimizer, state=state, scaler=scaler, recipe=recipe,
                            extra_files={TOKENIZER_FILE: tokenizer.to_str()})

    def epoch_batches(epoch: int, start_batch: int) -> DataLoader:
        dataset.set_epoch(epoch)
        batches = shuffled_batches(len(dataset), cfg.data.batch_size, info.rank, info.world_size, cfg.run.seed,
                                   epoch)[start_batch:]
        return DataLoader(dataset, batch_sampler=batches, num_workers=0 if use_features else cfg.data.num_workers)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, tokens = (t.to(info.device) for t in batch)
        tokens = tokens[:, : int((tokens != PAD).sum(dim=1).max())]  # drop the all-PAD tail of the batch
        with amp.autocast(amp_mode, info.device):
            logits = ddp(inputs, tokens[:, :-1])  # (B, L-1, V): position t scores token t+1
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                               ignore_index=PAD, label_smoothing=cfg.run.label_smoothing)
        return loss, len(tokens)

    def end_of_epoch() -> None:
        if not (info.is_main and val_items):
            return
        metrics, hyps = validate(net, val_items, val_feats, tokenizer, info.device, cfg.run.eval_batch_size)
        state.history.append({"epoch": state.epoch, "step": state.step, **metrics})
        logger.info("epoch %d: val BLEU-4 %.3f CIDEr %.3f (%d images); e.g. %r", state.epoch, metrics["bleu4"],
                    metrics["cider"], int(metrics["n"]), hyps[0])
        if writer is not None:
            writer.add_scalar("val/bleu4", metrics["bleu4"], state.step)
            writer.add_scalar("val/cider", metrics["cider"], state.step)
        if state.best_score is None or metrics["cider"] > state.best_score:
            state.best_score = metrics["cider"]
        write_report(run_dir, state.history, state.step, ["bleu4", "cider"], f"captioner {cfg.model.preset}")

    model.train()
    loop = LoopSettings.from_run(cfg.run, steps_per_epoch, "images_per_s")
    run_epochs(state, loop=loop, info=info, model=model, optimizer=optimizer, scaler=scaler, optim=cfg.optim,
               epoch_batches=epoch_batches, loss_of=loss_of, end_of_epoch=end_of_epoch, save=save, writer=writer)
    if writer is not None:
        writer.close()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    return recipe_main(argv, prog="python -m training.captioner", description=__doc__, config_cls=TrainConfig,
                       train=train)
