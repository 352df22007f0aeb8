"""The `nui` command: one entry point that hands each subcommand to the package that owns it.

    nui data speech --out data/speech            build the synthesized speech corpus
    nui data librispeech --root DIR --out m.jsonl import a LibriSpeech-layout folder
    nui data lm --text data/speech/lm_text.txt --out data/speech/lm
    nui train speech --nproc 2 --recipe training/speech_ctc/recipes/small.yaml [key=value ...]
    nui eval speech --checkpoint RUN_OR_CKPT --manifest data/speech/test.jsonl --lm-dir data/speech/lm
    nui export speech --checkpoint RUN_OR_CKPT --repo model_repository [--dev-manifest ...] [--lm-dir ...]
    nui eval speech-fp16 --checkpoint RUN_OR_CKPT --manifest data/speech/dev.jsonl [--limit 40]
    nui up [--port 50051] [--app-port 7860]      server + web app (voice, symptoms, images, status)
    nui listen [--server host:port] [--device N]  live microphone transcription in the terminal
    nui serve [--repo model_repository] [--port 50051]
    nui transcribe clip.wav [--server host:port]
    nui export diagnosis --checkpoint RUN_OR_CKPT --data data/diagnosis --repo model_repository
    nui eval dialog --repo model_repository --data data/diagnosis [--patients 500]
    nui eval absent --repo model_repository --data data/diagnosis   do "no" answers lower the diseases they should
    nui export symptom-text --data data/diagnosis --repo model_repository
    nui eval symptom-text --repo model_repository [--out docs/diagnosis/symptom_text_eval.json]
    nui diagnose "my head is pounding, no fever" [--symptom HP:0001945] [--absent ID] [--server host:port]
    nui data captions --out data/captions         build the caption scenes (COCO-captions JSON + images)
    nui data coco --annotations captions_train2017.json --images DIR --out data/coco
    nui train captioner --nproc 2 --recipe training/captioner/recipes/small.yaml [key=value ...]
    nui eval captioner --checkpoint RUN_OR_CKPT --data data/captions --split test --out eval.json [--photos]
    nui export captioner --checkpoint RUN_OR_CKPT --repo model_repository [--dev-images DIR ...]
    nui caption photo.jpg [--server host:port] [--beam 3] [--n-best 3]
    nui precision --repo model_repository --model speech_ctc --data data/speech/dev.jsonl --out DIR

Subcommand modules are imported only when used, so `nui serve` never imports torch.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable

# (command, task) -> "module:function" taking argv and returning an exit code.
COMMANDS: dict[tuple[str, str | None], str] = {
    ("data", "speech"): "training.speech_ctc.corpus:main",
    ("data", "librispeech"): "training.speech_ctc.librispeech:main",
    ("data", "lm"): "training.speech_ctc.lm:main",
    ("data", "diagnosis"): "training.diagnosis.data:main",
    ("data", "captions"): "training.captioner.data:main",
    ("data", "coco"): "training.captioner.coco:main",
    ("eval", "captioner"): "training.captioner.evaluate:main",
    ("eval", "speech"): "training.speech_ctc.evaluate:main",
    ("eval", "diagnosis"): "training.diagnosis.evaluate:main",
    ("eval", "speech-fp16"): "training.speech_ctc.fp16_eval:main",
    ("export", "speech"): "nui.export:main",
    ("export", "diagnosis"): "nui.export_diagnosis:export_main",
    ("export", "captioner"): "nui.export_captioner:main",
    ("eval", "dialog"): "nui.export_diagnosis:dialog_main",
    ("eval", "absent"): "nui.absent_evidence:main",
    ("export", "symptom-text"): "nui.symptom_text:export_main",
    ("eval", "symptom-text"): "nui.symptom_text:eval_main",
    ("serve", None): "server.main:main",
    ("up", None): "ui.up:main",
    ("listen", None): "ui.listen:main",
    ("transcribe", None): "server.transcribe:main",
    ("diagnose", None): "server.diagnose:main",
    ("caption", None): "server.caption:main",
    ("precision", None): "nui.precision:main",
}
TRAIN_MODULES = {"speech": "training.speech_ctc", "diagnosis": "training.diagnosis", "captioner": "training.captioner"}


def _load(target: str) -> Callable[[list[str]], int]:
    module, func = target.split(":")
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    return fn


def train(task: str, argv: list[str]) -> int:
    """`nui train TASK [--nproc N] ARGS...`: launch `torchrun -m training.TASK ARGS...`."""
    nproc = "1"
    if argv[:1] == ["--nproc"] and len(argv) > 1:
        nproc, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--nproc="):
        nproc, argv = argv[0].split("=", 1)[1], argv[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", TRAIN_MODULES[task], *argv]
    return subprocess.call(cmd, env=os.environ.copy())


def usage() -> str:
    lines = ["usage: nui COMMAND [TASK] [ARGS...]", ""]
    lines += [f"  nui {c}{' ' + t if t else ''}" for c, t in COMMANDS]
    lines += [f"  nui train {t} [--nproc N] --recipe RECIPE [key=value ...]" for t in TRAIN_MODULES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        if not rest or rest[0] not in TRAIN_MODULES:
            print(f"nui train: choose a task from {sorted(TRAIN_MODULES)}", file=sys.stderr)
            return 2
        return train(rest[0], rest[1:])
    if (command, None) in COMMANDS:
        return _load(COMMANDS[(command, None)])(rest)
    if rest and (command, rest[0]) in COMMANDS:
        return _load(COMMANDS[(command, rest[0])])(rest[1:])
    print(usage(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
