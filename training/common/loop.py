"""The epoch/step loop of a training module, written once: LR schedule, zero-grad, the caller's loss, the
AMP backward/clip/step, run-state counters, logging (rank-0 progress bar + TensorBoard), periodic and
end-of-epoch checkpoints, `stop_after_steps`, and exact resume in the middle of an epoch.

The caller owns what differs between tasks: the batches of an epoch (starting at `state.batch_in_epoch`,
so a resumed run continues where it stopped), the forward + loss of a batch, and what happens at the end
of an epoch (dev metrics, best score, reports).

    finished = run_epochs(state, loop=LoopSettings(...), info=info, model=model, optimizer=optimizer,
                          scaler=scaler, optim=cfg.optim, epoch_batches=..., loss_of=...,
                          end_of_epoch=..., save=save, writer=writer)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from training.common import amp, distributed
from training.common.checkpoint import RunState
from training.common.launch import log_train_step
from training.common.optim import OptimSection, lr_at

B = TypeVar("B")


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    steps_per_epoch: int  # optimizer steps in one epoch (same on every rank)
    log_every_steps: int
    save_every_steps: int  # plus one at the end of every epoch
    stop_after_steps: int = 0  # stop (after saving) once this many steps are done; 0 = run to the end
    rate_name: str = "items_per_s"  # TensorBoard name of the throughput scalar

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


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
