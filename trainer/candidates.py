"""Each user's candidates from a retrieval run: where a ranker's hard negatives come from.

``onnxrec train --candidates-from RETRIEVAL_RUN --candidates N --hard-negatives F`` trains a ranker for
the pipeline RETRIEVAL_RUN -> ranker: before the first epoch, the retrieval run's model scores every
item for every user (its history and exclusions those of training: the training split only) and each
user's best ``N`` items that are not among the user's training items are kept (:class:`CandidatePool`).
Each negative of a training example is then, with probability ``F``, one of its user's candidates drawn
uniformly (a hard negative), else an item drawn uniformly from the catalog as without the option. A
user's validation and test items are not known to training, so they may be drawn like any other item.

The draws are :class:`~onnxrec.trainer.negatives.NegativeSampler`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onnxrec.errors import TrainingError
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.evaluate import users_per_batch
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.negatives import CandidatePool
from onnxrec.trainer.pipeline_eval import top_candidates
from onnxrec.trainer.retrieval_features import RetrievalFeatures, candidate_scores
from onnxrec.trainer.runs import open_run_trained_on
from onnxrec.trainer.scorer import ModelScorer


def user_candidates(
    model: Recommender, ds: Dataset, n: int, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Every user's ``n`` best items by ``model`` that are not among the user's training items, best
    first, as CSR (indptr [num_users + 1], items); scored in chunks of users, as at validation (history
    and exclusions from the training split)."""
    scorer = ModelScorer(model, ds, device)
    known = known_sequences(ds, "valid")
    chunk = users_per_batch(ds.num_items, 1024)
    rows: list[np.ndarray] = []
    counts = np.zeros(ds.num_users, dtype=np.int64)
    with scorer.items_once():
        for start in range(0, ds.num_users, chunk):
            users = np.arange(start, min(start + chunk, ds.num_users))
            items, valid = top_candidates(scorer(users, "valid"), users, known, n)
            rows.append(items[valid])
            counts[users] = valid.sum(1)
    indptr = np.zeros(ds.num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)


def load_pool(run: Path, ds: Dataset, n: int, device: torch.device | str = "cpu") -> CandidatePool:
    """The candidates of the retrieval run at ``run`` for training on ``ds``; refused unless the run was
    trained on ``ds`` (the same content hash)."""
    ckpt = open_run_trained_on(Path(run), ds, f"--candidates-from {run}: the retrieval run", "--data")
    if n > ds.num_items:
        raise TrainingError(f"--candidates {n} is more than the catalog's {ds.num_items} items")
    model = model_from_checkpoint(ckpt).to(device)
    indptr, items = user_candidates(model, ds, n, device)
    features = retrieval_features(model, ds, indptr, items, n, device) if model.factorized else None
    source = {
        "run": str(Path(run).resolve()),
        "model_type": ckpt["model_type"],
        "content_hash": ds.content_hash,
        "candidates": n,
        "mean_candidates_per_user": round(float(len(items)) / max(ds.num_users, 1), 3),
    }
    return CandidatePool(indptr, items, model, source, features)


def retrieval_features(
    model: Recommender, ds: Dataset, indptr: np.ndarray, items: np.ndarray, n: int, device: torch.device | str
) -> RetrievalFeatures:
    """The factorized retrieval ``model``'s vectors as at :func:`user_candidates` (history: the training
    split) and its scores of each user's candidates (CSR ``indptr``, ``items``)."""
    scorer = ModelScorer(model, ds, device)
    with scorer.items_once():
        table, bias = scorer.item_side
        users = [
            scorer.user_vectors(np.arange(s, min(s + 1024, ds.num_users)), "valid").float().cpu().numpy()
            for s in range(0, ds.num_users, 1024)
        ]
    user_vectors = np.ascontiguousarray(np.concatenate(users), dtype=np.float32)
    item_vectors = np.ascontiguousarray(table.detach().float().cpu().numpy(), dtype=np.float32)
    item_bias = np.ascontiguousarray(bias.detach().float().cpu().numpy(), dtype=np.float32)
    scores = candidate_scores(user_vectors, item_vectors, item_bias, indptr, items)
    return RetrievalFeatures(user_vectors, item_vectors, item_bias, indptr, scores, n)
