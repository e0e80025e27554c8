"""Tests of onnxrec.trainer.data.fetch against a local HTTP server (no network beyond 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from onnxrec.errors import FetchError
from onnxrec.trainer.data.fetch import fetch

SHARED_DATA = Path(
    os.environ.get("ONNXREC_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
ML100K = SHARED_DATA / "ml-100k"

Serve = Callable[..., tuple[str, list[str]]]


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


@pytest.fixture(scope="module")
def ml100k_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of the real ML-100K files laid out like GroupLens' ml-100k.zip (folder ml-100k/)."""
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (set ONNXREC_SHARED_DATA to the shared data dir)")
    served = tmp_path_factory.mktemp("served")
    target = served / "ml-100k.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(zipfile.ZipInfo("ml-100k/"), b"")
        for file in sorted(ML100K.iterdir()):
            if file.is_file():
                archive.write(file, f"ml-100k/{file.name}")
    return target


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a threaded HTTP server on 127.0.0.1 for a directory; return (base URL, request log).

    The directory's files appear under ``<base URL>/<name>``, the base URL having a path
    (``/datasets``) like GroupLens' has.
    """
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(directory: Path, *, delay: float = 0.0) -> tuple[str, list[str]]:
        requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if delay:
                    time.sleep(delay)
                super().do_GET()

            def translate_path(self, path: str) -> str:
                return super().translate_path(path.removeprefix("/datasets"))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(directory)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return f"http://{host!s}:{port}/datasets", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_verifies_and_unpacks(ml100k_zip: Path, serve: Serve, tmp_path: Path) -> None:
    base_url, requests = serve(ml100k_zip.parent)
    dest = tmp_path / "datasets"
    checksums = {"movielens-100k": _sha256(ml100k_zip)}

    folder = fetch("movielens-100k", dest, base_url=base_url, checksums=checksums)

    assert folder == dest / "ml-100k"
    data = (folder / "u.data").read_bytes()
    assert data.count(b"\n") == 100_000
    assert data == (ML100K / "u.data").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in ML100K.iterdir() if p.is_file())
    assert requests == ["/datasets/ml-100k.zip"]
    assert _leftovers(dest) == ["ml-100k"]  # no temporary zip or directory left behind

    # An existing folder is returned as is: no second request (the alias name works too).
    again = fetch("ml-100k", dest, base_url=base_url, checksums=checksums)
    assert again == folder
    assert len(requests) == 1


def test_fetch_accepts_md5_override(ml100k_zip: Path, serve: Serve, tmp_path: Path) -> None:
    base_url, requests = serve(ml100k_zip.parent)
    md5 = "md5:" + hashlib.md5(ml100k_zip.read_bytes()).hexdigest()
    folder = fetch("ML-100K", tmp_path, base_url=base_url, checksums={"movielens-100k": md5})
    assert (folder / "u.item").read_bytes() == (ML100K / "u.item").read_bytes()
    assert len(requests) == 1


@pytest.mark.parametrize("checksums", [None, {"movielens-100k": "sha256:" + "0" * 64}])
def test_checksum_mismatch_leaves_nothing(
    ml100k_zip: Path, serve: Serve, tmp_path: Path, checksums: dict[str, str] | None
) -> None:
    # Without an override the built-in official MD5 applies, which this locally built zip cannot match.
    base_url, _ = serve(ml100k_zip.parent)
    dest = tmp_path / "datasets"
    with pytest.raises(FetchError, match=r"checksum mismatch for http://127\.0\.0\.1:\d+/datasets/ml-100k\.zip"):
        fetch("movielens-100k", dest, base_url=base_url, checksums=checksums)
    assert _leftovers(dest) == []


def test_http_404_is_a_fetch_error(serve: Serve, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    base_url, requests = serve(empty)
    dest = tmp_path / "datasets"
    with pytest.raises(FetchError, match=r"ml-1m\.zip: HTTP 404"):
        fetch("movielens-1m", dest, base_url=base_url)
    assert requests == ["/datasets/ml-1m.zip"]
    assert _leftovers(dest) == []


@pytest.mark.parametrize("evil", ["../evil", "ml-100k/../../evil", "/tmp/evil-absolute"])
def test_zip_slip_is_rejected(serve: Serve, tmp_path: Path, evil: str) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive_path = served / "ml-100k.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("ml-100k/u.data", b"1\t1\t5\t881250949\n")
        archive.writestr(evil, b"gotcha\n")
    base_url, _ = serve(served)
    dest = tmp_path / "deep" / "datasets"
    with pytest.raises(FetchError, match=r"ml-100k\.zip has an unsafe member"):
        fetch("movielens-100k", dest, base_url=base_url, checksums={"movielens-100k": _sha256(archive_path)})
    assert _leftovers(dest) == []
    assert not (tmp_path / "deep" / "evil").exists()
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


def test_bad_zip_is_a_fetch_error(serve: Serve, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive_path = served / "ml-20m.zip"
    archive_path.write_bytes(b"this is not a zip archive\n" * 100)
    base_url, _ = serve(served)
    dest = tmp_path / "datasets"
    with pytest.raises(FetchError, match=r"ml-20m\.zip is not a valid zip archive"):
        fetch("ml-20m", dest, base_url=base_url, checksums={"movielens-20m": _sha256(archive_path)})
    assert _leftovers(dest) == []


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"unknown dataset 'movielens-7m'"):
        fetch("movielens-7m", tmp_path / "datasets")
    assert not (tmp_path / "datasets").exists()


def test_bad_checksum_spec(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="bad checksum"):
        fetch("ml-100k", tmp_path, base_url="http://127.0.0.1:9", checksums={"movielens-100k": "crc32:1234"})


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port was just closed: nothing listens there.
    dest = tmp_path / "datasets"
    with pytest.raises(FetchError, match=rf"cannot download http://127\.0\.0\.1:{port}/ml-100k\.zip"):
        fetch("movielens-100k", dest, base_url=f"http://127.0.0.1:{port}", timeout=5.0)
    assert _leftovers(dest) == []


def test_timeout(serve: Serve, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "ml-1m.zip").write_bytes(b"x")
    base_url, _ = serve(served, delay=2.0)
    dest = tmp_path / "datasets"
    with pytest.raises(FetchError, match="timed out"):
        fetch("movielens-1m", dest, base_url=base_url, timeout=0.3)
    assert _leftovers(dest) == []
