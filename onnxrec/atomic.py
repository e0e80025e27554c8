"""Write files and directories so that a failure never leaves a half-written result behind.

Everything is first written under a temporary name in the destination's own directory (so the final
``os.replace`` is atomic on one filesystem) and renamed only when complete. Directories and files get
the modes a plain ``mkdir`` or ``open`` would (the umask applies; ``tempfile`` would make them 0700
and 0600), and a failure also removes the parent directories that were created for the result.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from onnxrec.errors import OnnxrecError


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _remove_empty(dirs: list[Path]) -> None:
    """Remove ``dirs`` (outermost first), innermost first, as long as they are empty."""
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:  # not empty (another writer's result), or gone already
            return


def _temp_name(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{secrets.token_hex(6)}"


def _make_temp_dir(final: Path) -> Path:
    """A new, uniquely named directory beside ``final``, made as ``mkdir`` makes one (umask applies)."""
    for _ in range(100):
        tmp = _temp_name(final)
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:
            continue
        except FileNotFoundError:  # a failing writer removed the (empty) parent just now: make it again
            final.parent.mkdir(parents=True, exist_ok=True)
    raise FileExistsError(f"no free temporary name beside {final}")


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` when the block ends without an error.

    On an error the temporary directory is removed and the file system is left as it was: ``final``
    untouched, and the parent directories made for it (``repo/NAME/`` of ``repo/NAME/1``) removed
    again while empty. With ``overwrite`` an existing ``final`` is replaced (the old one is removed
    only after the new one is complete); without it an existing ``final`` is an error. Directories
    get the mode ``mkdir`` gives them (0755 under umask 022), not ``tempfile``'s 0700.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OnnxrecError(f"{final} already exists (choose another name or remove it)")
    parent = final.parent
    created = _missing_dirs(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_temp_dir(final)
    except OSError as exc:
        _remove_empty(created)
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
        _remove_empty(created)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (the file's mode is what
    ``open`` gives a new file: 0644 under umask 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
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
