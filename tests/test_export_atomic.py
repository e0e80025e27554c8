"""onnxrec/atomic.py: results appear whole or not at all, leave the tree as it was on a failure, and get the
modes a plain mkdir or open gives them (the umask applies)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from onnxrec.atomic import atomic_dir, atomic_write_bytes


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its mode and size (directories: size 0)."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_mode, 0 if p.is_dir() else st.st_size)
    return out


@pytest.fixture(params=[(0o022, 0o755), (0o027, 0o750)], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Sets the process umask for the test; yields the mode a new directory gets under it."""
    mask, mode = request.param
    old = os.umask(mask)
    try:
        yield mode
    finally:
        os.umask(old)


def test_atomic_dir_follows_the_umask(umask: int, tmp_path: Path) -> None:
    """Version (and run, dataset) directories get a plain mkdir's mode, not tempfile's 0700."""
    final = tmp_path / "repo" / "m" / "1"
    with atomic_dir(final) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == umask
        (tmp / "manifest.json").write_text("{}")
    for d in (final, final.parent, final.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == umask, d


def test_atomic_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "checkpoint.pt", b"x")
    assert stat.S_IMODE((tmp_path / "checkpoint.pt").stat().st_mode) == umask & 0o666
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_dir_failure_leaves_the_tree_as_it_was(tmp_path: Path) -> None:
    """A failure removes the temporary directory and the parents made for the result (``repo/NAME/``,
    even ``repo/``), and nothing that was there before."""
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "1" / "manifest.json").write_text("{}")
    before = tree(tmp_path)
    for final in (repo / "new" / "1", repo / "other" / "2", tmp_path / "fresh" / "m" / "1"):
        with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
            (tmp / "half-written.onnx").write_bytes(b"x")
            raise RuntimeError("export failed")
        assert tree(tmp_path) == before, final
