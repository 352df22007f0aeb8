"""Import a LibriSpeech folder as a NeMo manifest for the speech CTC model.

    nui data librispeech --root LibriSpeech/dev-clean --out data/librispeech/dev-clean.jsonl

Owns reading the LibriSpeech layout: ``<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
holds lines ``<speaker>-<chapter>-<utt> TRANSCRIPT`` and each utterance's audio is
``<speaker>-<chapter>-<utt>.flac`` beside it. ``--root`` may be one subset (``dev-clean``) or a
folder of subsets (``LibriSpeech``): transcript files are found recursively. The manifest gets the
duration (from the FLAC header), the speaker id, the utterance id as ``sentence_id`` and
``normalize_text`` of the transcript; audio paths are absolute unless the audio lies under the
manifest's folder. A missing FLAC file or a malformed transcript line is an error naming the file.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import soundfile as sf

from models.ctc_text import normalize_text
from training.speech_ctc.manifest import Utterance, write_manifest

logger = logging.getLogger(__name__)

_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def read_transcripts(trans_path: Path) -> list[Utterance]:
    """Utterances of one ``<speaker>-<chapter>.trans.txt``; ValueError naming the file and line on
    a malformed line, a foreign utterance id, an empty transcript, or missing/unreadable audio."""
    chapter_id = trans_path.name.removesuffix(".trans.txt")
    utts: list[Utterance] = []
    for lineno, line in enumerate(trans_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{trans_path}:{lineno}"
        utt_id, _, transcript = line.strip().partition(" ")
        match = _UTT_ID.match(utt_id)
        if not match or not transcript.strip():
            raise ValueError(f"{where}: expected '<speaker>-<chapter>-<utterance> TRANSCRIPT', got {line!r}")
        if f"{match.group(1)}-{match.group(2)}" != chapter_id:
            raise ValueError(f"{where}: utterance {utt_id} does not belong to chapter {chapter_id}")
        text = normalize_text(transcript)
        if not text:
            raise ValueError(f"{where}: transcript of {utt_id} is empty after normalization")
        audio_path = trans_path.parent / f"{utt_id}.flac"
        if not audio_path.is_file():
            raise ValueError(f"{where}: audio file {audio_path} is missing")
        try:
            info = sf.info(str(audio_path))
        except (sf.LibsndfileError, RuntimeError) as e:
            raise ValueError(f"{where}: cannot read audio file {audio_path}: {e}") from e
        utts.append(Utterance(audio_filepath=audio_path.resolve(), duration_s=info.frames / info.samplerate,
                              text=text, speaker=match.group(1), sentence_id=utt_id))
    return utts


def import_librispeech(root: Path) -> list[Utterance]:
    """All utterances under root, sorted by transcript file; ValueError if root holds no transcripts."""
    if not root.is_dir():
        raise ValueError(f"LibriSpeech root {root} is not a folder")
    trans_files = sorted(root.rglob("*.trans.txt"))
    if not trans_files:
        raise ValueError(f"no <speaker>-<chapter>.trans.txt files under {root}")
    utts: list[Utterance] = []
    for trans_path in trans_files:
        utts += read_transcripts(trans_path)
    return utts


def main(argv: list[str] | None = None) -> int:
    """`nui data librispeech --root DIR --out manifest.jsonl`: 0 on success, 1 on bad data."""
    parser = argparse.ArgumentParser(prog="nui data librispeech",
                                     description="Write a NeMo manifest for a LibriSpeech folder.")
    parser.add_argument("--root", type=Path, required=True, help="a LibriSpeech subset, or a folder of them")
    parser.add_argument("--out", type=Path, required=True, help="manifest to write (JSONL)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        utts = import_librispeech(args.root)
    except ValueError as e:
        logger.error("%s", e)
        return 1
    write_manifest(args.out, utts)
    logger.info("wrote %s: %d utterances, %.2f h, %d speakers", args.out, len(utts),
                sum(u.duration_s for u in utts) / 3600, len({u.speaker for u in utts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
