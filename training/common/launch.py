"""The shared `main` of every training module: parse `--recipe` + dotted overrides, set up logging
(INFO on rank 0 only), train, and always leave the process group.

    torchrun --nproc_per_node=N -m training.<task> --recipe RECIPE [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from training.common import distributed
from training.common.config import load_recipe

C = TypeVar("C")


def log_train_step(writer: Any, step: int, loss: float, lr: float, grad_norm: float, rate_name: str,
                   rate: float) -> None:
    """TensorBoard scalars of one logged training step (rank 0 only: `writer` is None elsewhere)."""
    if writer is None:
        return
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/grad_norm", grad_norm, step)
    writer.add_scalar(f"train/{rate_name}", rate, step)


def recipe_main(argv: list[str] | None, *, prog: str, description: str | None, config_cls: type[C],
                train: Callable[[C], Any]) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, required=True, help="YAML recipe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 run.epochs=2")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_recipe(args.recipe, config_cls, args.overrides)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    try:
        train(cfg)
    finally:
        distributed.shutdown_distributed()
    return 0
