"""`nui export speech`: checkpoint -> ONNX engine in a model repository, behind the parity gate.

    nui export speech --checkpoint runs/speech_small --repo model_repository \
        --dev-manifest data/speech/dev.jsonl --lm-dir data/speech/lm [--version N]

--checkpoint takes a run folder (its latest checkpoint), a checkpoint folder, or a model.safetensors.
This is glue between training/ (checkpoint and manifest readers) and engines/ (export), which must not
import each other.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engines.export_speech import DEFAULT_ATOL, ParityError, export_speech_ctc
from engines.manifest import sha256_file
from models.speech_ctc import SpeechCTCConfig, build
from training.common.checkpoint import latest_checkpoint, read_weights
from training.speech_ctc.manifest import load_audio, read_manifest

logger = logging.getLogger(__name__)


def resolve_weights(path: Path) -> Path:
    """model.safetensors for a run folder, a checkpoint folder or the file itself."""
    if path.is_file():
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"{path} is neither a checkpoint, a model.safetensors, nor a run with checkpoints")
    return latest / "model.safetensors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui export speech", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repo", type=Path, required=True, help="model repository folder")
    p.add_argument("--model-name", default="speech_ctc")
    p.add_argument("--version", type=int, default=None, help="default: next free version")
    p.add_argument("--dev-manifest", type=Path, help="clips for the parity gate (default: seeded noise)")
    p.add_argument("--dev-limit", type=int, default=64)
    p.add_argument("--lm-dir", type=Path, help="folder with lm.arpa and unigrams.txt (nui data lm)")
    p.add_argument("--decoder", type=Path, help="JSON of beam options tuned on dev (alpha, beta, ...)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        weights = resolve_weights(args.checkpoint)
        state, name, cfg_dict = read_weights(weights)
        if name != "speech_ctc":
            raise ValueError(f"{weights} holds a {name!r} model, not speech_ctc")
        model = build(SpeechCTCConfig.from_dict(cfg_dict))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        clips = None
        if args.dev_manifest:
            utts = read_manifest(args.dev_manifest)[: args.dev_limit]
            clips = [load_audio(u.audio_filepath) for u in utts]
        extra_files, extras = {}, {}
        if args.lm_dir:
            extra_files = {"lm.arpa": args.lm_dir / "lm.arpa", "unigrams.txt": args.lm_dir / "unigrams.txt"}
            extras["lm"] = {"arpa": "lm.arpa", "unigrams": "unigrams.txt"}
        if args.decoder:
            extras["decoder"] = json.loads(args.decoder.read_text())
        path, manifest = export_speech_ctc(
            model, args.repo, args.model_name, args.version, dev_clips=clips, atol=args.atol,
            source_checkpoint_sha256=sha256_file(weights), extra_files=extra_files, extras=extras)
    except (OSError, ValueError, ParityError) as e:
        print(f"nui export speech: {e}", file=sys.stderr)
        return 1
    print(f"published {path} (parity: {manifest.parity})")
    return 0
