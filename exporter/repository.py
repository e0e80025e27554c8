"""The model repository the server watches: ``REPO/NAME/VERSION/`` directories, never modified.

A version directory is written elsewhere (a hidden temporary directory beside it) and renamed
into place when complete, so the server never sees a half-written version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from onnxrec.errors import ExportError

MANIFEST = "manifest.json"
# 3: every exclude row of recommend / recommend_from_history holds at least one -1, and k is not clamped
# in the graph (the server checks it); 2: the top-k graphs take an input ``k``; 1: top-k_max graphs
MODEL_FORMAT = "onnxrec.model/3"
READABLE_FORMATS = (MODEL_FORMAT,)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str) -> str:
    """``name`` if it is a safe model name (letters, digits, ``_ . -``; no path parts)."""
    if not _NAME.match(name) or ".." in name:
        raise ExportError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (at most 128)")
    return name


def list_versions(model_dir: Path) -> list[int]:
    """The complete versions under ``model_dir`` (numeric directories with a manifest), ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric directory (complete or not), starting at 1."""
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1


def check_writable(repository: Path) -> None:
    """Raise :class:`ExportError` unless ``repository`` is (or can be made) a writable directory."""
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"repository {repository} is not a directory")
    probe = repository
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ExportError(f"repository {repository} is not writable")


def data_file(path: Path) -> Path:
    """Where a graph written with external data keeps its weights: ``<graph>.onnx.data`` beside it."""
    return path.with_name(path.name + ".data")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(version_dir: Path) -> dict[str, str]:
    """sha256 of every file in a version directory except the manifest."""
    return {p.name: sha256_file(p) for p in sorted(version_dir.iterdir()) if p.is_file() and p.name != MANIFEST}


def read_manifest(version_dir: Path) -> dict[str, Any]:
    """The manifest of a version directory."""
    path = Path(version_dir) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{version_dir}: not a model version (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc.msg})") from exc
    if manifest.get("format") not in READABLE_FORMATS:
        raise ExportError(
            f"{path}: unsupported format {manifest.get('format')!r} (this onnxrec reads {', '.join(READABLE_FORMATS)}; "
            "export the run again with this onnxrec)"
        )
    return dict(manifest)


def verify_files(version_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`ExportError` if a file is missing or its hash differs from the manifest."""
    for name, digest in manifest.get("files", {}).items():
        path = Path(version_dir) / name
        if not path.is_file():
            raise ExportError(f"{version_dir}: {name} is missing")
        if sha256_file(path) != digest:
            raise ExportError(f"{version_dir}: {name} does not match its hash in the manifest")
