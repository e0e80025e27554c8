"""Download and unpack the public MovieLens datasets from GroupLens.

:func:`fetch` streams the official zip to a temporary file, checks its checksum, unpacks it safely
(no absolute paths, no ``..``) into a temporary directory beside the destination and renames that
directory into place, so a failure never leaves a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from onnxrec.atomic import atomic_dir
from onnxrec.errors import FetchError, OnnxrecError

#: Where GroupLens publishes the MovieLens zips (``base_url`` of :func:`fetch` replaces it).
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"

_CHUNK = 1 << 20
_HASHES = ("md5", "sha256")


@dataclass(frozen=True)
class _Dataset:
    filename: str  # name of the zip under the base URL
    folder: str  # the folder the zip unpacks to
    checksum: str  # "md5:HEX" or "sha256:HEX"


# Official MD5 sums of the GroupLens zips (GroupLens publishes each as ``<zip>.md5`` beside the zip).
# The .md5 files could not be read here (no internet), so each value was confirmed in several unrelated
# public repositories that download these zips and verify them:
# * ml-100k.zip 0e33842e24a9c977be4e0107933c0723: eli-osherovich/papers_with_code
#   (datasets/movielens/dl_config.py, arxiv_1912.09140/movielens_config.py: checked by keras get_file),
#   a PyTorch ML100K dataset class, a README telling users to check `md5 -q ml-100k.zip`, and a
#   downloader that lists it next to the official ml-100k.zip.md5 URL.
# * ml-1m.zip c4d9eecfca2ab87c1945afe126590906: the same papers_with_code tables, PaddlePaddle's
#   dataset cache script, the datarec MovieLens1M class and several download scripts; also quoted in
#   the project's shared/data/README.md.
# * ml-20m.zip cd245b17a1ae2cc31bb14903e1204af3: the same papers_with_code tables, the datamaestro
#   MovieLens definition, a PyTorch ML20M dataset class, a benchmark script that compares
#   `md5sum ml-20m.zip` with "MD5 (ml-20m.zip) = cd245b17..." (the format of GroupLens' .md5 files),
#   and a dataset card that quotes the official ml-20m.zip.md5 sidecar.
_DATASETS: dict[str, _Dataset] = {
    "movielens-100k": _Dataset("ml-100k.zip", "ml-100k", "md5:0e33842e24a9c977be4e0107933c0723"),
    "movielens-1m": _Dataset("ml-1m.zip", "ml-1m", "md5:c4d9eecfca2ab87c1945afe126590906"),
    "movielens-20m": _Dataset("ml-20m.zip", "ml-20m", "md5:cd245b17a1ae2cc31bb14903e1204af3"),
}
_ALIASES: dict[str, str] = {"ml-100k": "movielens-100k", "ml-1m": "movielens-1m", "ml-20m": "movielens-20m"}


def dataset_names() -> tuple[str, ...]:
    """The canonical names :func:`fetch` accepts (``ml-100k`` etc. are accepted as aliases too)."""
    return tuple(_DATASETS)


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        known = ", ".join([*_DATASETS, *_ALIASES])
        raise FetchError(f"unknown dataset {name!r} (known: {known})")
    return key


def _parse_checksum(spec: str, name: str) -> tuple[str, str]:
    algo, sep, digest = spec.partition(":")
    algo = algo.strip().lower()
    digest = digest.strip().lower()
    if not sep or algo not in _HASHES or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(f"bad checksum {spec!r} for {name} (expected 'md5:HEX' or 'sha256:HEX')")
    return algo, digest


def _download(url: str, target: Path, algo: str, timeout: float) -> str:
    """Stream ``url`` into ``target`` and return the hex digest (``algo``) of what was written."""
    hasher = hashlib.new(algo)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            length_header = response.headers.get("Content-Length")
            total = int(length_header) if length_header and length_header.isdigit() else None
            received = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1],
                disable=not sys.stderr.isatty(),
                leave=False,
            ) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise FetchError(f"download of {url} incomplete: got {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise FetchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise FetchError(f"cannot download {url}: timed out after {timeout:g} s") from exc
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise FetchError(f"cannot download {url}: {text}") from exc
    except TimeoutError as exc:  # socket.timeout is TimeoutError; raised while reading the body
        raise FetchError(f"cannot download {url}: timed out after {timeout:g} s") from exc
    except (OSError, ValueError) as exc:  # connection reset, disk full, malformed URL, ...
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FetchError(f"cannot download {url}: {text}") from exc
    return hasher.hexdigest()


def _safe_members(archive: zipfile.ZipFile, zip_name: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The archive's file members with their relative paths; raise on any unsafe member name."""
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    for info in archive.infolist():
        raw = info.filename
        normalized = raw.replace("\\", "/")
        rel = PurePosixPath(normalized)
        if (
            normalized.startswith("/")
            or (len(normalized) >= 2 and normalized[1] == ":")  # a Windows drive ("C:...")
            or ".." in rel.parts
            or "\x00" in normalized
        ):
            raise FetchError(f"{zip_name} has an unsafe member {raw!r} (absolute path or '..')")
        parts = [p for p in rel.parts if p not in ("", ".")]
        if not parts or parts[0] == "__MACOSX":
            continue
        members.append((info, PurePosixPath(*parts)))
    return members


def _unpack(zip_path: Path, zip_name: str, dest: Path, default_folder: str) -> Path:
    """Unpack ``zip_path`` atomically into ``dest/<folder>``; return that folder."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _safe_members(archive, zip_name)
            if not any(not info.is_dir() for info, _ in members):
                raise FetchError(f"{zip_name} holds no files")
            tops = {rel.parts[0] for _, rel in members}
            single_top = len(tops) == 1 and all(len(rel.parts) > 1 or info.is_dir() for info, rel in members)
            folder = next(iter(tops)) if single_top else default_folder
            final = dest / folder
            if final.exists():
                raise FetchError(f"{final} already exists but is not the expected {default_folder} folder")
            with atomic_dir(final) as tmp:
                tmp.chmod(0o755)  # mkdtemp made it private; a dataset folder is not
                for info, rel in members:
                    inner = PurePosixPath(*rel.parts[1:]) if single_top else rel
                    target = tmp.joinpath(*inner.parts) if inner.parts else tmp
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
    except FetchError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise FetchError(f"{zip_name} is not a valid zip archive: {exc}") from exc
    except OnnxrecError as exc:
        raise FetchError(f"cannot unpack {zip_name}: {exc}") from exc
    except OSError as exc:
        raise FetchError(f"cannot unpack {zip_name} into {dest}: {exc.strerror or exc}") from exc
    return final


def fetch(
    name: str,
    dest: Path,
    *,
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download a MovieLens dataset from GroupLens and unpack it under ``dest``.

    ``name`` is ``movielens-100k``, ``movielens-1m`` or ``movielens-20m`` (or ``ml-100k``,
    ``ml-1m``, ``ml-20m``). The zip is streamed to a temporary file in ``dest`` (a progress bar is
    shown when stderr is a terminal), checked against its official MD5 (``checksums`` maps a
    canonical name to ``"md5:HEX"`` or ``"sha256:HEX"`` and overrides the built-in table), and
    unpacked into ``dest/<folder inside the zip>`` (e.g. ``dest/ml-100k``) through a temporary
    directory and a rename. An existing folder is returned as is, without downloading. ``base_url``
    replaces ``https://files.grouplens.org/datasets/movielens`` (e.g. a mirror or a test server).

    Returns the path of the unpacked dataset folder. Every failure (unknown name, HTTP error,
    unreachable server, timeout, checksum mismatch, bad or unsafe zip) raises
    :class:`~onnxrec.errors.FetchError` and leaves nothing half-written in ``dest``.
    """
    key = _canonical(name)
    spec = _DATASETS[key]
    dest = Path(dest)
    final = dest / spec.folder
    if final.is_dir():
        return final
    if final.exists():
        raise FetchError(f"{final} exists but is not a directory")

    expected = spec.checksum
    if checksums is not None:
        for candidate in (key, name, *(alias for alias, canon in _ALIASES.items() if canon == key)):
            if candidate in checksums:
                expected = checksums[candidate]
                break
    algo, digest = _parse_checksum(expected, key)

    url = f"{(base_url or DEFAULT_BASE_URL).rstrip('/')}/{spec.filename}"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.part-", dir=dest)
    except OSError as exc:
        raise FetchError(f"cannot write to {dest}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_zip = Path(tmp_name)
    try:
        actual = _download(url, tmp_zip, algo, timeout)
        if actual != digest:
            raise FetchError(f"checksum mismatch for {url}: expected {algo} {digest}, got {actual}")
        return _unpack(tmp_zip, spec.filename, dest, spec.folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_zip.unlink()
