"""The --precision / --engine / --timing-cache options every `nui export TASK` command shares."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from engines.tensorrt_engine import installed_tensorrt


def add_engine_options(p: argparse.ArgumentParser, precisions: Sequence[str], precision_help: str,
                       refit: bool = False) -> None:
    p.add_argument("--precision", choices=list(precisions), default="fp32", help=precision_help)
    p.add_argument("--engine", choices=["onnxruntime", "tensorrt", "torch"], default="onnxruntime",
                   help="tensorrt: a strongly typed TensorRT plan of the FP16 engine (implies --precision fp16; "
                        "needs TensorRT and a CUDA GPU; engines/tensorrt_build.py). torch: the PyTorch backend "
                        "(FP16 autocast and CUDA graphs on a GPU with `nui serve --provider cuda`; "
                        "engines/torch_engine.py), gated against the ONNX engine")
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file, read and updated")
    if refit:
        p.add_argument("--refit", action="store_true", help="build a refittable TensorRT plan")


def check_engine_options(args: argparse.Namespace) -> None:
    """--engine tensorrt implies --precision fp16, and fails before any export when TensorRT or the GPU
    is missing (RuntimeError/ValueError from engines.tensorrt_engine)."""
    if args.engine == "tensorrt":
        args.precision = "fp16"
        installed_tensorrt()
