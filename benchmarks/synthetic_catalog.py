"""Untrained matrix-factorisation run directories over synthetic catalogs of an exact size, for benchmarks.

Serving cost depends on the catalog (items x dimension) and the request's exclusion list, not on how
well the factors were trained, so a catalog-scaling benchmark does not need a training run. This
module builds an ordinary run directory (``checkpoint.pt`` + ``dataset/``, the layout ``onnxrec
train`` writes and ``export()`` reads) with the project's own pieces:

* the interaction log comes from ``generate_synthetic`` (Zipf popularity, taste clusters, heavy-tailed
  per-user counts, item metadata), then every item that drew no interaction gets one, from a random
  user, dated before that user's log, so the catalog has exactly ``num_items`` items and the held-out
  (last) interactions stay the generator's;
* ``build_dataset`` / ``save_dataset`` make the dataset artifact (leave-one-out split, id maps);
* the model is a freshly initialised, seeded ``MF`` (N(0, 0.05) factors, zero biases) sized by
  ``trainer.factory.model_config``; the checkpoint dict has the keys ``train()`` writes and is saved
  with ``save_checkpoint``, marked untrained (``epoch`` 0, ``metrics.untrained``).

``make_ranker_run`` builds the second stage of a pipeline version the same way: an untrained, seeded
ranker (``fm``, ``deepfm``, ...) over an existing catalog run's dataset (same content hash, as
``onnxrec export RUN --ranker RANKER_RUN`` requires).

The number of users grows with the catalog (``max(2,000, num_items / 50)``) so that every user keeps
about the same number of seen items (the exclusion list each request carries) at every size.

    python benchmarks/synthetic_catalog.py --items 100000 --out /tmp/run100k   # builds one run dir
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

DIM = 64
MIN_USERS = 2000
ITEMS_PER_USER = 50  # generator's mean interactions per user; also sets users = items / this


@dataclass(frozen=True)
class CatalogRun:
    """A built run directory and what went into it."""

    run: Path
    num_users: int
    num_items: int
    dim: int
    interactions: int
    filled_items: int  # items that got their one interaction from the coverage fill
    seen_mean: float  # items per user known at serving time (the exclusion list)
    seen_max: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def default_users(num_items: int) -> int:
    """Users for a catalog of ``num_items``: enough that ~50 interactions each cover the catalog."""
    return max(MIN_USERS, math.ceil(num_items / ITEMS_PER_USER))


def covering_log(num_users: int, num_items: int, seed: int) -> tuple[Any, int]:
    """``generate_synthetic``'s log, plus one interaction for each item it left untouched.

    Returns the :class:`~onnxrec.trainer.data.log.InteractionLog` and how many items were filled in.
    """
    import pyarrow.compute as pc

    from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog
    from onnxrec.trainer.data.synth import generate_synthetic

    log = generate_synthetic(num_users=num_users, num_items=num_items, interactions_per_user=ITEMS_PER_USER, seed=seed)
    t = log.interactions
    item_num = pc.cast(pc.utf8_slice_codeunits(t["item_id"], 1), pa.int64()).to_numpy()  # "i123" -> 123
    covered = np.zeros(num_items + 1, dtype=bool)
    covered[item_num] = True
    missing = np.flatnonzero(~covered[1:]) + 1
    if len(missing) == 0:
        return log, 0
    rng = np.random.default_rng(seed + 1)
    user_num = pc.cast(pc.utf8_slice_codeunits(t["user_id"], 1), pa.int64()).to_numpy()
    first_seen = np.full(num_users + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, user_num, t["timestamp"].to_numpy())
    owners = rng.integers(1, num_users + 1, size=len(missing))
    # before the owner's first generated interaction, so leave-one-out still holds out the generator's last two
    stamps = first_seen[owners] - rng.integers(1, 30 * 86_400, size=len(missing))
    extra = pa.table(
        {
            "user_id": pa.array([f"u{u}" for u in owners.tolist()], pa.string()),
            "item_id": pa.array([f"i{i}" for i in missing.tolist()], pa.string()),
            "rating": pa.array(np.full(len(missing), 3.0), pa.float64()),
            "timestamp": pa.array(stamps, pa.int64()),
        }
    ).cast(INTERACTION_SCHEMA)
    merged = pa.concat_tables([t, extra])
    order = pc.sort_indices(merged, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")])
    filled = InteractionLog(
        interactions=merged.take(order),
        source=f"{log.source} + one interaction for each of {len(missing)} uncovered items",
        user_table=log.user_table,
        item_table=log.item_table,
        user_feature_columns=log.user_feature_columns,
        item_feature_columns=log.item_feature_columns,
    )
    return filled, len(missing)


def make_catalog_run(
    out: Path,
    num_items: int,
    *,
    dim: int = DIM,
    num_users: int | None = None,
    seed: int = 0,
    like: Path | None = None,
) -> CatalogRun:
    """Write a run directory at ``out`` holding an untrained MF model over exactly ``num_items`` items.

    ``out`` must not exist. The factors are ``MF``'s own seeded initialisation; nothing is trained.
    With ``like`` (a trained run of a factorized model with ``dim``-dim vectors), the item factors and
    biases and the user factors are drawn instead from Gaussians with the mean and covariance of that
    run's item and user vectors (``trained_factors.draw_like``), the user biases are 0.
    """
    import torch

    from onnxrec.trainer.checkpoint import CHECKPOINT_FILE, save_checkpoint
    from onnxrec.trainer.config import TrainConfig
    from onnxrec.trainer.data.dataset import build_dataset, save_dataset
    from onnxrec.trainer.data.preprocess import PreprocessSpec
    from onnxrec.trainer.data.split import SplitSpec
    from onnxrec.trainer.factory import model_config
    from onnxrec.trainer.history import known_sequences
    from onnxrec.trainer.models.registry import build_model, config_to_dict

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    users = num_users or default_users(num_items)
    log, filled = covering_log(users, num_items, seed)
    name = f"synthetic-catalog-{num_items}"
    ds = build_dataset(log, PreprocessSpec(), SplitSpec(seed=seed), name)
    if ds.num_items != num_items:
        raise RuntimeError(f"the catalog has {ds.num_items} items, not {num_items}")
    out.mkdir(parents=True)
    save_dataset(ds, out / "dataset")
    cfg = TrainConfig(data=str(out / "dataset"), out=str(out), model="mf", dim=dim, epochs=1, seed=seed)
    mcfg = config_to_dict(model_config("mf", cfg, ds))
    torch.manual_seed(seed)
    model = build_model("mf", mcfg)
    note = "seeded random MF factors for serving benchmarks"
    if like is not None:
        from trained_factors import draw_like, run_factors

        source = run_factors(Path(like))
        if source.items.shape[1] != dim + 1:
            raise ValueError(f"{like} has {source.items.shape[1] - 1}-dim vectors, not {dim}")
        drawn = draw_like(source, ds.num_items, ds.num_users, seed)
        with torch.no_grad():
            model.item_emb.weight.copy_(torch.from_numpy(drawn.items[:, :dim]))
            model.item_b.weight.copy_(torch.from_numpy(drawn.items[:, dim:]))
            model.user_emb.weight.copy_(torch.from_numpy(drawn.users[:, :dim]))
            model.user_b.weight.zero_()
        note = (
            f"MF factors drawn like the trained run {Path(like).resolve()} (trained_factors.py), for serving benchmarks"
        )
    ckpt = checkpoint_dict("mf", mcfg, model, ds, cfg, note, dataset_path="dataset")
    save_checkpoint(ckpt, out / CHECKPOINT_FILE)
    seen = np.diff(known_sequences(ds, "serve").indptr)
    return CatalogRun(
        run=out,
        num_users=ds.num_users,
        num_items=ds.num_items,
        dim=dim,
        interactions=int(seen.sum()),
        filled_items=filled,
        seen_mean=round(float(seen.mean()), 1),
        seen_max=int(seen.max()),
        seconds=round(time.perf_counter() - t0, 1),
    )


def checkpoint_dict(
    model_type: str, mcfg: dict[str, Any], model: Any, ds: Any, cfg: Any, note: str, dataset_path: str
) -> dict[str, Any]:
    """The checkpoint dict ``train()`` writes, for an untrained ``model`` over ``ds`` (``epoch`` 0,
    ``metrics.untrained``); ``dataset_path``: the dataset directory, relative to the run or absolute."""
    from onnxrec import __version__
    from onnxrec.trainer.checkpoint import FORMAT

    return {
        "format": FORMAT,
        "onnxrec_version": __version__,
        "model_type": model_type,
        "model_config": mcfg,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": {},
        "epoch": 0,
        "best_epoch": 0,
        "feature_spec": ds.feature_spec.to_dict(),
        "dataset": {
            "path": dataset_path,
            "name": ds.name,
            "content_hash": ds.content_hash,
            "counts": ds.meta.get("counts", {}),
        },
        "user_ids": [str(u) for u in ds.user_ids],
        "item_ids": [str(i) for i in ds.item_ids],
        "metrics": {"untrained": True, "note": note},
        "train_config": cfg.to_dict(),
    }


def make_ranker_run(retrieval_run: Path, out: Path, model_type: str = "fm", *, seed: int = 0) -> Path:
    """Write a run directory at ``out`` holding an untrained, seeded ranker (``fm``, ``deepfm``, ...) over
    the dataset of ``retrieval_run`` (the same content hash, as a pipeline export requires; the dataset is
    referred to by its absolute path, not copied). Sized as ``onnxrec train --model MODEL`` would size it
    (the trainer's default ``dim``); the item features are set as ``train()`` sets them."""
    import torch

    from onnxrec.trainer.checkpoint import CHECKPOINT_FILE, save_checkpoint
    from onnxrec.trainer.config import TrainConfig
    from onnxrec.trainer.data.dataset import load_dataset
    from onnxrec.trainer.factory import model_config
    from onnxrec.trainer.models.registry import build_model, config_to_dict

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    data = (Path(retrieval_run) / "dataset").resolve()
    ds = load_dataset(data)
    cfg = TrainConfig(data=str(data), out=str(out), model=model_type, epochs=1, seed=seed)
    mcfg = config_to_dict(model_config(model_type, cfg, ds))
    torch.manual_seed(seed)
    model = build_model(model_type, mcfg)
    model.set_item_features({k: torch.from_numpy(v) for k, v in ds.item_features.items()})
    note = f"seeded untrained {model_type} ranker over {data}, for serving benchmarks"
    out.mkdir(parents=True)
    save_checkpoint(checkpoint_dict(model_type, mcfg, model, ds, cfg, note, str(data)), out / CHECKPOINT_FILE)
    return out


def main() -> None:
    """Build one run directory from the command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--like", type=Path, help="draw the factors like this trained run's")
    args = ap.parse_args()
    info = make_catalog_run(args.out, args.items, dim=args.dim, num_users=args.users, seed=args.seed, like=args.like)
    print(info.to_dict())


if __name__ == "__main__":
    main()
