"""The epoch/step loop of a training module, written once: LR schedule, zero-grad, the caller's loss, the
AMP backward/clip/step, run-state counters, logging (rank-0 progress bar + TensorBoard), periodic and
end-of-epoch checkpoints, `stop_after_steps`, and exact resume in the middle of an epoch.

The caller owns what differs between tasks: the batches of an epoch (starting at `state.batch_in_epoch`,
so a resumed run continues where it stopped), the forward + loss of a batch, and what happens at the end
of an epoch (dev metrics, best score, reports).

    writer = tensorboard_writer(info, run_dir)
    save = checkpoint_saver(info, run_dir, model=model, model_name=..., model_config=..., optimizer=optimizer,
                            state=state, scaler=scaler, recipe=recipe)
    finished = run_epochs(state, loop=LoopSettings.from_run(cfg.run, steps_per_epoch, "items_per_s"), info=info,
                          model=model, optimizer=optimizer, scaler=scaler, optim=cfg.optim, epoch_batches=...,
                          loss_of=..., end_of_epoch=..., save=save, writer=writer)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from training.common import amp, distributed
from training.common.checkpoint import RunState, save_checkpoint
from training.common.launch import log_train_step
from training.common.optim import OptimSection, lr_at

logger = logging.getLogger(__name__)

B = TypeVar("B")


class RunCounts(Protocol):
    """The loop fields every task's recipe `run` section has."""

    @property
    def epochs(self) -> int: ...

    @property
    def log_every_steps(self) -> int: ...

    @property
    def save_every_steps(self) -> int: ...

    @property
    def stop_after_steps(self) -> int: ...


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    steps_per_epoch: int  # optimizer steps in one epoch (same on every rank)
    log_every_steps: int
    save_every_steps: int  # plus one at the end of every epoch
    stop_after_steps: int = 0  # stop (after saving) once this many steps are done; 0 = run to the end
    rate_name: str = "items_per_s"  # TensorBoard name of the throughput scalar

    @classmethod
    def from_run(cls, run: RunCounts, steps_per_epoch: int, rate_name: str) -> LoopSettings:
        return cls(epochs=run.epochs, steps_per_epoch=steps_per_epoch, log_every_steps=run.log_every_steps,
                   save_every_steps=run.save_every_steps, stop_after_steps=run.stop_after_steps,
                   rate_name=rate_name)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def tensorboard_writer(info: distributed.DistInfo, run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter into `<run_dir>/tb` on rank 0; None on the other ranks."""
    if not info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))


def checkpoint_saver(info: distributed.DistInfo, run_dir: Path, *, model: torch.nn.Module, model_name: str,
                     model_config: dict[str, Any], optimizer: torch.optim.Optimizer, state: RunState,
                     scaler: torch.amp.GradScaler, recipe: dict[str, Any],
                     extra_files: dict[str, str] | None = None) -> Callable[[], None]:
    """The `save` of `run_epochs`: rank 0 writes the checkpoint of the current state, every rank waits."""
    def save() -> None:
        if info.is_main:
            save_checkpoint(run_dir, model=model, model_name=model_name, model_config=model_config,
                            optimizer=optimizer, state=state,
                            scaler_state=scaler.state_dict() if scaler.is_enabled() else None, recipe=recipe,
                            extra_files=extra_files)
        distributed.barrier()

    return save


def run_epochs(state: RunState, *, loop: LoopSettings, info: distributed.DistInfo, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, optim: OptimSection,
               epoch_batches: Callable[[int, int], Iterable[B]],
               loss_of: Callable[[B], tuple[torch.Tensor, float]],
               end_of_epoch: Callable[[], None], save: Callable[[], None], writer: Any = None) -> bool:
    """Train until `loop.epochs` are done; True when finished, False when stopped by stop_after_steps.

    epoch_batches(epoch, start_batch): this rank's batches of `epoch` from batch `start_batch` on.
    loss_of(batch): the FP32 scalar loss (forward under `amp.autocast` is up to the caller, which knows
    which part runs in low precision) and the amount of data in the batch (items, audio seconds, ...) for
    the throughput.
    end_of_epoch(): called on every rank after `state.epoch` was advanced, before the epoch's checkpoint.
    model: the unwrapped module whose gradients are clipped (DDP's replica shares its parameters).
    """
    while state.epoch < loop.epochs:
        bar = tqdm(epoch_batches(state.epoch, state.batch_in_epoch), total=loop.steps_per_epoch,
                   initial=state.batch_in_epoch, disable=not info.is_main, desc=f"epoch {state.epoch + 1}",
                   dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        t0, seen = time.perf_counter(), 0.0
        for batch in bar:
            lr = lr_at(state.step, loop.total_steps, optim)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss, items = loss_of(batch)
            grad_norm = amp.backward_and_step(loss, model, optimizer, scaler, optim.clip_grad_norm)
            state.step += 1
            state.batch_in_epoch += 1
            seen += items
            if state.step % loop.log_every_steps == 0:
                loss_v = distributed.all_reduce_mean(float(loss.detach()), info.device)
                rate = seen * info.world_size / (time.perf_counter() - t0)
                state.history.append({"step": state.step, "loss": loss_v})
                log_train_step(writer, state.step, loss_v, lr, float(grad_norm), loop.rate_name, rate)
                bar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{lr:.2e}", rate=f"{rate:.0f}/s")
            if loop.stop_after_steps and state.step >= loop.stop_after_steps:
                bar.close()
                save()
                logger.info("stopping after %d steps as asked (run.stop_after_steps)", state.step)
                return False
            if state.step % loop.save_every_steps == 0:
                save()
        bar.close()
        state.epoch += 1
        state.batch_in_epoch = 0
        end_of_epoch()
        save()
    return True


def shuffled_batches(n: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's index batches of `epoch`: one seeded permutation of range(n) per epoch, cut into
    world_size * batch_size global batches; the incomplete tail is dropped so every rank takes the same
    number of steps. Resume slices the list (`[start_batch:]`)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // (batch_size * world_size)
    return perm[: steps * batch_size * world_size].reshape(steps, world_size, batch_size)[:, rank].tolist()
