"""The client-only distribution ``onnxrec-client``: built by scripts/build_client_dist.py, its wheel holds
only onnxrec.clients and onnxrec.v1, needs only grpcio and protobuf, and works against a real server
with torch, numpy, onnx, onnxruntime, pyarrow and click unimportable."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path
from types import ModuleType

import pytest

from onnxrec.clients import AsyncRecommenderClient, RecommenderClient
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_client_dist.py"
FULL_ONLY = {"cli.py", "bench.py"}
HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pyarrow", "click", "tqdm", "grpc_health")
USERS = [f"u{i}" for i in range(1, 7)]


def _root_project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"])


def _root_requirements(*names: str) -> list[str]:
    deps = _root_project()["dependencies"]
    assert isinstance(deps, list)
    return [next(d for d in deps if d.startswith(name + ">") or d.startswith(name + "=")) for name in names]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_client_dist", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass/annotation lookups need it registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of one run of the build script (wheel and sdist), as ``make client-dist`` runs it."""
    out = tmp_path_factory.mktemp("client-dist")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(Path(line).name for line in proc.stdout.split()) == sorted(p.name for p in out.iterdir())
    return out


def _expected_files() -> dict[str, Path]:
    """Wheel member name -> the repository file it must be a copy of."""
    files = {f"onnxrec/clients/{p.name}": p for p in (REPO / "clients").glob("*.py") if p.name not in FULL_ONLY}
    files |= {f"onnxrec/v1/{p.name}": p for p in (REPO / "onnxrec" / "v1").iterdir() if p.suffix in {".py", ".pyi"}}
    return files


def test_wheel_metadata_and_contents(client_dist: Path) -> None:
    version = _root_project()["version"]
    (wheel,) = client_dist.glob("*.whl")
    (sdist,) = client_dist.glob("*.tar.gz")
    assert wheel.name == f"onnxrec_client-{version}-py3-none-any.whl"
    assert sdist.name == f"onnxrec_client-{version}.tar.gz"
    assert not list(client_dist.glob(".*"))  # no partial files left behind

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"onnxrec_client-{version}.dist-info"
        meta = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        assert meta["Name"] == "onnxrec-client" and meta["Version"] == version
        assert meta.get_all("Requires-Dist") == _root_requirements("grpcio", "protobuf")

        expected = _expected_files()
        assert {n for n in names if not n.startswith(dist_info + "/")} == set(expected)
        assert "onnxrec/__init__.py" not in names
        assert not {n for n in names if Path(n).name in FULL_ONLY}
        for name, source in expected.items():
            data = zf.read(name)
            assert data == source.read_bytes(), f"{name} differs from {source}"
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(data)):
                    imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if isinstance(node, ast.ImportFrom) and node.module:
                        imported.append(node.module)
                    for module in imported:
                        assert module.split(".")[0] not in HEAVY, f"{name} imports {module}"
                        assert not module.startswith("onnxrec.") or module.startswith(("onnxrec.clients", "onnxrec.v1"))

    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "VERSION", "requirements.txt"} <= members
    assert set(expected) <= members and "onnxrec/__init__.py" not in members


def test_build_refuses_modules_that_need_more_than_grpc(tmp_path: Path) -> None:
    script = _script()
    package = tmp_path / "onnxrec" / "clients"
    package.mkdir(parents=True)
    (package / "ok.py").write_text("import json\nimport grpc\nfrom google.protobuf import message\n")
    (package / "sibling.py").write_text("from onnxrec.v1 import recommender_pb2\nfrom onnxrec.clients import ok\n")
    script.check_imports(tmp_path / "onnxrec")
    (package / "core.py").write_text("from onnxrec.errors import OnnxrecError\nfrom onnxrec import settings\n")
    (package / "heavy.py").write_text("import numpy as np\n")
    with pytest.raises(script.BuildError) as err:
        script.check_imports(tmp_path / "onnxrec")
    for text in ("imports onnxrec.errors", "imports onnxrec.settings", "imports numpy"):
        assert text in str(err.value)


# Runs in a fresh interpreter: heavy packages unimportable, the editable onnxrec finder removed, the
# unpacked wheel first on sys.path; prints what the client-only import answers.
_CLIENT_ONLY = """
import asyncio, json, sys
site, address, users, blocked = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), set(json.loads(sys.argv[4]))

class Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked: onnxrec-client must not need it")
        return None

def editable(obj):
    return str(getattr(obj, "__module__", "")).startswith("__editable__")

removed = [f for f in sys.meta_path if editable(f)]
sys.meta_path[:] = [Blocker] + [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
sys.path[:] = [site] + [p for p in sys.path if "__editable__" not in p]
sys.path_importer_cache.clear()
assert not [m for m in sys.modules if m == "onnxrec" or m.startswith("onnxrec.")]

import onnxrec.clients
from onnxrec.clients import AsyncRecommenderClient, RecommenderClient, RecommenderError

with RecommenderClient(address, timeout=10) as client:
    sync = {u: client.recommend("demo", u, 10).item_ids for u in users}
    batch = [r.item_ids for r in client.recommend_batch("demo", users, 10)]
    health = client.health()
    models = [m.name for m in client.list_models()]
    try:
        client.recommend("nope", "u1")
        error = None
    except RecommenderError as err:
        error = err.code.name

async def run():
    async with AsyncRecommenderClient(address, timeout=10) as aclient:
        return [(await aclient.recommend("demo", u, 10)).item_ids for u in users], await aclient.health()

aio, aio_health = asyncio.run(run())
print(json.dumps({
    "editable_finders_removed": len(removed),
    "namespace_path": list(onnxrec.__path__),
    "onnxrec_file": getattr(onnxrec, "__file__", None),
    "modules": {m: getattr(sys.modules[m], "__file__", None) for m in sorted(sys.modules)
                if m == "onnxrec" or m.startswith("onnxrec.")},
    "heavy_loaded": sorted(m for m in sys.modules if m.split(".")[0] in blocked),
    "sync": sync, "batch": batch, "aio": aio, "health": health, "aio_health": aio_health,
    "models": models, "error": error,
}))
"""


def test_client_only_install_answers_like_the_full_client(
    client_dist: Path, live_server: ServerProcess, tmp_path: Path
) -> None:
    (wheel,) = client_dist.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    proc = subprocess.run(
        [
            sys.executable,
            "-I",  # no PYTHONPATH, no cwd on sys.path (site-packages stay: grpcio and protobuf live there)
            "-c",
            _CLIENT_ONLY,
            str(site),
            live_server.address,
            json.dumps(USERS),
            json.dumps(HEAVY),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)

    # the import came from the unpacked wheel alone, as a namespace package, without the heavy stack
    assert got["editable_finders_removed"] >= 1  # (the dev install is editable: make sure it was bypassed)
    assert got["onnxrec_file"] is None and got["namespace_path"] == [str(site / "onnxrec")]
    assert got["modules"]["onnxrec.clients"] == str(site / "onnxrec" / "clients" / "__init__.py")
    assert all(f is None or Path(f).is_relative_to(site) for f in got["modules"].values()), got["modules"]
    assert "onnxrec.errors" not in got["modules"] and got["heavy_loaded"] == []

    # ... and answers exactly as the full distribution's client does
    with RecommenderClient(live_server.address, timeout=10) as client:
        full = {u: client.recommend("demo", u, 10).item_ids for u in USERS}
        assert client.health() == got["health"] == got["aio_health"] == "SERVING"
        assert [m.name for m in client.list_models()] == got["models"] == ["demo"]

    async def run_full() -> list[list[str]]:
        async with AsyncRecommenderClient(live_server.address, timeout=10) as aclient:
            return [(await aclient.recommend("demo", u, 10)).item_ids for u in USERS]

    import asyncio

    assert all(len(ids) == 10 for ids in full.values())
    assert got["sync"] == full
    assert got["batch"] == got["aio"] == [full[u] for u in USERS] == asyncio.run(run_full())
    assert got["error"] == "NOT_FOUND"
