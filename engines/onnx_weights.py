"""FP16 weight storage for exported ONNX graphs: half the file, FP32 arithmetic.

    weights_to_fp16(Path("model.onnx"))  # in place

Every FP32 initializer of at least `min_elements` elements is stored as FP16 with a Cast back to FP32
in front of its users. ONNX Runtime folds those Casts into constants when it loads the session, so a
run pays nothing for them; the file (and the git-bundled model) is half the size. Small tensors (norm
scales, biases) stay FP32: they save little and are the most rounding-sensitive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def weights_to_fp16(path: Path, min_elements: int = 1024, keep_fp32_prefix: str | None = None) -> int:
    """Rewrite `path` with FP16-stored weights; returns how many initializers were converted.
    Initializers whose name starts with `keep_fp32_prefix` stay FP32 (rounding-sensitive by design)."""
    m = onnx.load(str(path))
    casts = []
    for init in m.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        if keep_fp32_prefix and init.name.startswith(keep_fp32_prefix):
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < min_elements:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name + "__fp16"))
        casts.append(helper.make_node("Cast", [name + "__fp16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=name + "__cast"))
    for node in reversed(casts):
        m.graph.node.insert(0, node)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return len(casts)
