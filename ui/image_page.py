"""The image page: upload several pictures (or take one with the webcam) -> n-best captions with scores.

Endpoint (for gradio_client): `/describe` (files and/or a webcam shot -> a table of captions + a
message). When the server offers no `nui.v1.Captioner` service the page says so, naming the services
it does offer (read from its reflection service).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ui.client import NuiError
from ui.context import AppContext
from ui.images import ImageProblem, prepare_image

MAX_IMAGES = 16
N_BEST = 3
COLUMNS = ["image", "rank", "caption", "score"]


def describe(ctx: AppContext, files: list[str] | None, shot: str | None) -> tuple[pd.DataFrame, str]:
    paths = [Path(p) for p in (files or [])] + ([Path(shot)] if shot else [])
    empty = pd.DataFrame([], columns=COLUMNS)
    if not paths:
        return empty, "Add one or more pictures first."
    if len(paths) > MAX_IMAGES:
        return empty, f"{len(paths)} pictures: at most {MAX_IMAGES} at once."
    problems, ready = [], []
    for p in paths:
        try:
            ready.append((p.name, prepare_image(p)))
        except ImageProblem as e:
            problems.append(str(e))
    rows = []
    if ready:
        try:
            captions = ctx.client.caption([data for _, data in ready], n_best=N_BEST)
        except NuiError as e:
            return empty, " ".join([*problems, f"The server could not caption them: {e.message}"])
        rows = [(name, rank, c.text, round(c.score, 3)) for (name, _), cs in zip(ready, captions, strict=True)
                for rank, c in enumerate(cs, 1)]
    done = f"Captioned {len(ready)} picture(s)." if ready else ""
    return pd.DataFrame(rows, columns=COLUMNS), " ".join([done, *problems]).strip()


def build(ctx: AppContext) -> None:
    if not ctx.captions:
        offered = ", ".join(s for s in ctx.services if not s.startswith("grpc.")) or "none"
        gr.Markdown(f"**This server has no captioning model loaded** (no `nui.v1.Captioner` service; it offers: "
                    f"{offered}).", elem_id="image-unavailable")
        return
    with gr.Row():
        files = gr.File(file_count="multiple", file_types=["image"], label="Pictures", elem_id="image-files")
        shot = gr.Image(sources=["webcam", "upload"], type="filepath", label="...or the webcam", elem_id="image-shot")
    go = gr.Button("Describe", variant="primary", elem_id="image-describe")
    message = gr.Markdown(elem_id="image-message")
    table = gr.Dataframe(headers=COLUMNS, label="Captions (best first; score = log-probability after the length "
                         "penalty)", interactive=False, elem_id="image-captions")

    def run(f: list[str] | None, s: str | None) -> tuple[pd.DataFrame, str]:
        return describe(ctx, f, s)

    go.click(run, [files, shot], [table, message], api_name="describe")
