"""Write files and directories so that a failure never leaves a half-written result behind.

Everything is first written under a temporary name in the destination's own directory (so the final
``os.replace`` is atomic on one filesystem) and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from onnxrec.errors import OnnxrecError


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` when the block ends without an error.

    On an error the temporary directory is removed and ``final`` is left as it was. With
    ``overwrite`` an existing ``final`` is replaced (the old one is removed only after the new one is
    complete); without it an existing ``final`` is an error.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OnnxrecError(f"{final} already exists (choose another name or remove it)")
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as exc:
        raise OnnxrecError(f"cannot write to {parent}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        if final.exists():
            old = parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))
