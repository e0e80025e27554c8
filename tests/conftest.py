"""Shared fixtures: the real MovieLens data beside the checkout, and small prepared datasets."""

from __future__ import annotations

import os

# as the CLI does: spinning OpenMP threads make torch crawl when the cores are shared (before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import pytest

from onnxrec.trainer.data.dataset import Dataset, build_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import read_movielens_100k
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic

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
