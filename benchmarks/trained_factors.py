"""Catalogs of any size whose factors look like a trained model's, for the index benchmarks.

An approximate nearest-neighbour index is only as fast as the structure of the vectors lets it be.
The untrained factors of ``synthetic_catalog`` (seeded N(0, 0.05) in all 64 dimensions, zero biases)
have none: their variance is spread evenly over every dimension, the worst case for a graph or
cluster index. A trained model's factors are very different. On the 3-epoch ML-100K two-tower
(``onnxrec train --model two-tower``, the README's default) the item vectors' centred variance sits
95 % in 5 of 64 dimensions, the users' in 6 (an ML-100K MF: 50 and 53 dimensions). No public
catalog of a million trained item vectors is at hand, so this module makes one with the same first
and second moments as a trained run: it reads a run's item vectors (with the bias appended, as the
export's index holds them) and known users' vectors (computed as the export computes them), fits a
mean and covariance to each, and draws as many items and users as asked from those Gaussians. The
draw keeps the spectrum and the norm distribution to second order; it has none of the trained
vectors' clusters (a Gaussian has one mode), so it is still harder than the trained vectors
themselves.

    python benchmarks/trained_factors.py --run RUN   # prints the spectrum of RUN's factors
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Factors:
    """Item vectors [N, D + 1] (bias last) and user vectors [U, D + 1] (a 1 last): score = user . item."""

    items: np.ndarray
    users: np.ndarray


def run_factors(run: Path) -> Factors:
    """The item and known-user vectors of the (factorized) run at ``run``, as the export computes them."""
    from onnxrec.exporter.export import serving_tables
    from onnxrec.exporter.vector_graphs import UserVectorGraph, item_index_vectors
    from onnxrec.trainer.checkpoint import model_from_checkpoint
    from onnxrec.trainer.runs import open_run

    ckpt, ds = open_run(run)
    model = model_from_checkpoint(ckpt)
    model.eval()
    users = UserVectorGraph(model, serving_tables(model, ds)).user_matrix.numpy()  # what the export's recall uses
    return Factors(items=item_index_vectors(model), users=np.ascontiguousarray(users, dtype=np.float32))


def spectrum_dims(vectors: np.ndarray, shares: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)) -> list[int]:
    """How many principal directions hold each share of the centred variance of ``vectors``."""
    centred = vectors - vectors.mean(axis=0)
    power = np.linalg.svd(centred, compute_uv=False) ** 2
    cumulative = np.cumsum(power) / power.sum()
    return [int(np.searchsorted(cumulative, s)) + 1 for s in shares]


def _draw(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows from the Gaussian with the mean and covariance of ``vectors``' rows (float32)."""
    mean = vectors.mean(axis=0)
    cov = np.cov(vectors, rowvar=False)
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    for start in range(0, n, 1 << 18):  # chunks: 10M x 65 float64 draws would need 5 GB at once
        stop = min(n, start + (1 << 18))
        out[start:stop] = rng.multivariate_normal(mean, cov, size=stop - start, method="eigh")
    return out


def draw_like(source: Factors, num_items: int, num_users: int, seed: int) -> Factors:
    """``num_items`` items and ``num_users`` users drawn like ``source``'s (the users' last column stays 1)."""
    rng = np.random.default_rng(seed)
    items = _draw(source.items, num_items, rng)
    users = np.ones((num_users, source.users.shape[1]), dtype=np.float32)
    users[:, :-1] = _draw(source.users[:, :-1], num_users, rng)
    return Factors(items=items, users=users)


def main() -> None:
    """Print the spectrum of a run's factors and of a draw like them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--items", type=int, default=100_000)
    args = ap.parse_args()
    source = run_factors(args.run)
    drawn = draw_like(source, args.items, 1000, seed=0)
    for label, f in (("run", source), ("drawn", drawn)):
        print(
            f"{label}: items {f.items.shape}, variance dims for 50/80/90/95 %: {spectrum_dims(f.items[:, :-1])}; "
            f"users {f.users.shape}: {spectrum_dims(f.users[:, :-1])}"
        )


if __name__ == "__main__":
    main()
