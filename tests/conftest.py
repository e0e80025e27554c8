"""Shared fixtures: the real MovieLens data beside the checkout, and small prepared datasets."""

from __future__ import annotations

import os

# as the CLI does: spinning OpenMP threads make torch crawl when the cores are shared (before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Iterator
from pathlib import Path

import pytest

from onnxrec.trainer.data.dataset import Dataset, build_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import read_movielens_100k
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic
from tests.serverproc import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The MovieLens folder: $ONNXREC_SHARED_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("ONNXREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = shared_data() / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {path} (set ONNXREC_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    path = shared_data() / "ml-1m"
    if not (path / "movies.dat").exists():
        pytest.skip(f"MovieLens-1M metadata not found at {path} (set ONNXREC_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ml100k(ml100k_dir: Path) -> Dataset:
    """ML-100K, every rating positive, leave-one-out with 99 negatives (the issue's protocol)."""
    return build_dataset(read_movielens_100k(ml100k_dir), PreprocessSpec(), SplitSpec(), "ml-100k")


@pytest.fixture(scope="session")
def synthetic() -> Dataset:
    """A small synthetic dataset (fast to train on)."""
    log = generate_synthetic(num_users=300, num_items=200, interactions_per_user=25, seed=3)
    return build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=50), "synthetic-small")


@pytest.fixture(scope="session")
def served_repo(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one small MF model named ``demo`` (k_max 50), trained on ``synthetic``."""
    from onnxrec.exporter.export import ExportOptions, export
    from onnxrec.trainer.config import TrainConfig
    from onnxrec.trainer.data.dataset import save_dataset
    from onnxrec.trainer.train import train

    root = tmp_path_factory.mktemp("served")
    data = save_dataset(synthetic, root / "data")
    run = train(TrainConfig(data=str(data), out=str(root / "run"), model="mf", epochs=2, progress=False, dim=16))
    export(run, root / "repo", "demo", options=ExportOptions(k_max=50, max_batch=16))
    return root / "repo"


@pytest.fixture(scope="session")
def live_server(served_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real ``onnxrec serve`` process on 127.0.0.1 serving ``served_repo`` (``live_server.address``)."""
    server = start_server(served_repo, tmp_path_factory.mktemp("live") / "server.log")
    yield server
    server.stop()
