"""Build the client-only distribution ``onnxrec-client`` (wheel and sdist) from the same sources as ``onnxrec``.

    python scripts/build_client_dist.py                 # dist/onnxrec_client-<version>-py3-none-any.whl + .tar.gz
    python scripts/build_client_dist.py --out DIR       # somewhere else
    python scripts/build_client_dist.py --no-sdist      # the wheel only

``onnxrec-client`` holds the import packages ``onnxrec.clients`` (clients/*.py without the CLI
``cli.py`` and the load generator ``bench.py``) and ``onnxrec.v1`` (the generated stubs in onnxrec/v1),
and depends only on grpcio and protobuf. It ships no ``onnxrec/__init__.py``: on its own, ``onnxrec``
is a namespace package. The full ``onnxrec`` distribution contains the same modules (install one or
the other, never both).

The sources are copied into a temporary directory laid out as onnxrec/clients and onnxrec/v1 beside
packaging/onnxrec-client/pyproject.toml and README.md; the version and the grpcio and protobuf
requirements are written there (VERSION, requirements.txt) from the root pyproject.toml, so they never
drift. Before building, every staged module's imports are checked: only the standard library, grpc,
google.protobuf, onnxrec.clients and onnxrec.v1. The build calls the PEP 517 backend of the staged
pyproject directly (no isolation, no network) and each finished file is moved into ``--out`` atomically.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging" / "onnxrec-client"
CLIENT_DIR = REPO / "clients"
STUBS_DIR = REPO / "onnxrec" / "v1"
FULL_ONLY = frozenset({"cli.py", "bench.py"})
"""Modules of clients/ that stay in the full distribution (they need click, numpy, onnxrec.errors)."""
DEPENDENCIES = ("grpcio", "protobuf")
"""The client distribution's requirements, taken verbatim from the root pyproject's dependencies."""
ALLOWED_THIRD_PARTY = frozenset({"grpc", "google"})
ALLOWED_FIRST_PARTY = ("onnxrec.clients", "onnxrec.v1")

# Runs in the staging directory: call the backend named by its pyproject (as `python -m build -n` would).
_BACKEND_CALL = """
import importlib, sys, tomllib
with open("pyproject.toml", "rb") as f:
    backend = importlib.import_module(tomllib.load(f)["build-system"]["build-backend"])
print(getattr(backend, "build_" + sys.argv[1])(sys.argv[2]))
"""


class BuildError(RuntimeError):
    """The client distribution cannot be built from this checkout."""


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def root_metadata(pyproject: Path = REPO / "pyproject.toml") -> tuple[str, list[str]]:
    """The version and the grpcio and protobuf requirements (verbatim) of the full distribution."""
    with pyproject.open("rb") as f:
        project = tomllib.load(f)["project"]
    if "version" not in project:
        raise BuildError(f"{pyproject} has no static [project] version")
    requirements = []
    for name in DEPENDENCIES:
        found = [r for r in project.get("dependencies", []) if _requirement_name(r) == name]
        if len(found) != 1:
            raise BuildError(f"{pyproject} must list {name} exactly once in [project] dependencies, not {found}")
        requirements.append(found[0])
    return str(project["version"]), requirements


def client_modules() -> list[Path]:
    """The clients/*.py files that go into the client distribution (all but the CLI and bench)."""
    return sorted(p for p in CLIENT_DIR.glob("*.py") if p.name not in FULL_ONLY)


def stub_files() -> list[Path]:
    """The generated stubs of onnxrec/v1 (``.py`` and ``.pyi``)."""
    return sorted(p for p in STUBS_DIR.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"})


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "onnxrec":  # `from onnxrec import x` imports the module onnxrec.x
                names.extend(f"onnxrec.{alias.name}" for alias in node.names)
            else:
                names.append(node.module)
    return names


def check_imports(package_root: Path) -> None:
    """Raise :class:`BuildError` if a staged module imports anything but the standard library, grpc,
    google.protobuf, onnxrec.clients and onnxrec.v1 (relative imports stay inside the package)."""
    bad = []
    for path in sorted(package_root.rglob("*.py")):
        for name in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            top = name.split(".")[0]
            if top == "onnxrec":
                ok = any(name == p or name.startswith(p + ".") for p in ALLOWED_FIRST_PARTY)
            else:
                ok = top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
            if not ok:
                bad.append(f"{path.relative_to(package_root.parent)} imports {name}")
    if bad:
        raise BuildError("the client distribution must need only grpcio and protobuf:\n  " + "\n  ".join(bad))


def stage(dest: Path) -> Path:
    """Lay out the client distribution's source tree in ``dest``; returns ``dest``."""
    version, requirements = root_metadata()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PACKAGING / name, dest / name)
    shutil.copy2(REPO / "LICENSE", dest / "LICENSE")
    (dest / "VERSION").write_text(version + "\n", encoding="utf-8")
    (dest / "requirements.txt").write_text("".join(r + "\n" for r in requirements), encoding="utf-8")
    for files, package in ((client_modules(), "clients"), (stub_files(), "v1")):
        target = dest / "onnxrec" / package
        target.mkdir(parents=True)
        for path in files:
            shutil.copy2(path, target / path.name)
    check_imports(dest / "onnxrec")
    return dest


def _run_backend(kind: str, source: Path, out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-c", _BACKEND_CALL, kind, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"building the {kind} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return out / proc.stdout.strip().splitlines()[-1]


def _place(built: Path, out_dir: Path) -> Path:
    """Move a finished file into ``out_dir`` atomically (copy beside it, then rename over)."""
    final = out_dir / built.name
    tmp = out_dir / f".{built.name}.{os.getpid()}.partial"
    try:
        shutil.copyfile(built, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def build(out_dir: Path, *, sdist: bool = True) -> list[Path]:
    """Build the wheel (and the sdist) of ``onnxrec-client`` into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxrec-client-") as tmp:
        source, built = Path(tmp) / "src", Path(tmp) / "dist"
        source.mkdir()
        built.mkdir()
        stage(source)
        # the sdist first, from the pristine staging tree (the wheel build leaves build/ and egg-info there)
        files = ([_run_backend("sdist", source, built)] if sdist else []) + [_run_backend("wheel", source, built)]
        return [_place(f, out_dir) for f in files]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output directory (default: dist/)")
    parser.add_argument("--no-sdist", action="store_true", help="build the wheel only")
    args = parser.parse_args(argv)
    try:
        for path in build(args.out, sdist=not args.no_sdist):
            print(path)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
