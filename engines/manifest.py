"""`manifest.json`: what an engine folder holds and how to check it.

A model repository is laid out like Triton's: `<repo>/<model>/<version>/` with `manifest.json` and the
engine files it lists (with sha256). Versions are positive integers; the highest is served by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: list[int | str]  # ints for fixed axes, names for dynamic ones ("batch", "samples")


@dataclass(frozen=True)
class Manifest:
    model: str  # repository model name, e.g. "speech_ctc"
    task: str  # which server-side pre/post-processing applies: "speech_ctc", ...
    config: dict[str, Any]  # the model config dataclass, as a dict
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[str, str]  # file name -> sha256 hex
    engine: str = "onnxruntime"
    precision: str = "fp32"
    opset: int = 17
    source_checkpoint_sha256: str = ""
    parity: dict[str, Any] = field(default_factory=dict)  # the parity gate's measured figures
    extras: dict[str, Any] = field(default_factory=dict)  # task-specific (e.g. LM file names)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"manifest schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
        d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
        return cls(**d)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a manifest."""
    version_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=version_dir, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(manifest.to_json())
    path = version_dir / MANIFEST_NAME
    os.replace(tmp, path)
    return path


def read_manifest(version_dir: Path, verify: bool = True) -> Manifest:
    """Read `manifest.json`; with verify, check every listed file's sha256 (fail fast at start-up)."""
    path = version_dir / MANIFEST_NAME
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as e:
        raise ValueError(f"{version_dir} has no {MANIFEST_NAME}") from e
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid manifest: {e}") from e
    if verify:
        for name, digest in manifest.files.items():
            f = version_dir / name
            if not f.is_file():
                raise ValueError(f"{path} lists {name}, which is missing")
            actual = sha256_file(f)
            if actual != digest:
                raise ValueError(f"{f} sha256 {actual[:12]}... does not match the manifest's {digest[:12]}...")
    return manifest


def model_versions(repo: Path, model: str) -> list[int]:
    """Sorted version numbers present for `model` in the repository."""
    d = repo / model
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def version_dir(repo: Path, model: str, version: int | None = None) -> Path:
    """Folder of a version (default: the highest); ValueError when there is none."""
    versions = model_versions(repo, model)
    if not versions:
        raise ValueError(f"model {model!r} has no versions under {repo}")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise ValueError(f"model {model!r} has no version {version} under {repo}; present: {versions}")
    return repo / model / str(version)


def next_version(repo: Path, model: str) -> int:
    versions = model_versions(repo, model)
    return versions[-1] + 1 if versions else 1


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` (not recursive), by name, for `Manifest.files`."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@contextlib.contextmanager
def staged_version(repo: Path, model: str, version: int | None = None) -> Iterator[tuple[Path, Path]]:
    """Stage a new version (default: the next number) of `model`: yields (staging folder, final folder).

    Everything is written into the hidden staging folder, which is renamed into place only when the block
    ends normally, so readers never see a half-written version; on an exception (a failed parity gate)
    it is removed and nothing is published. Versions are immutable: an existing one is refused.
    """
    version = version if version is not None else next_version(repo, model)
    final = repo / model / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable, pick another")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".export-{version}-"))
    try:
        yield tmp, final
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("published %s", final)
