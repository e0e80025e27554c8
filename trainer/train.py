"""``train``: the training stage's one entry point (data -> fit -> evaluate -> run directory).

A run directory holds ``checkpoint.pt`` (see :mod:`onnxrec.trainer.checkpoint`), ``config.toml``
(every option as used), ``metrics.jsonl`` (one line per epoch), ``eval.json`` (validation and
test metrics in both views: the pipeline's for a model trained on a retrieval run's candidates, see
:func:`final_metrics`; and ``negatives``, where its training negatives came from) and, when the data
was not a prepared dataset, ``dataset/`` (the prepared dataset, so the run is self-contained for the
exporter). It is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import tomli_w
import torch
import torch.distributed as dist

from onnxrec import __version__
from onnxrec.atomic import atomic_dir
from onnxrec.errors import ConfigError, TrainingError
from onnxrec.trainer.auto import AUTO, select_model
from onnxrec.trainer.candidates import load_pool
from onnxrec.trainer.checkpoint import CHECKPOINT_FILE, FORMAT, load_checkpoint, save_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.columns import ColumnMapping
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.data.erasure import read_ledger
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.source import resolve_data
from onnxrec.trainer.data.split import SplitKind, SplitSpec
from onnxrec.trainer.determinism import reproducible
from onnxrec.trainer.evaluate import evaluate
from onnxrec.trainer.factory import model_config, resolve_ema, resolve_model
from onnxrec.trainer.fit import FitResult, fit
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.registry import build_model, config_to_dict
from onnxrec.trainer.negatives import CandidatePool, NegativeSampler
from onnxrec.trainer.pipeline_eval import PipelineScorer, evaluate_pipeline, fit_pipeline_blend
from onnxrec.trainer.plan import check_model_memory
from onnxrec.trainer.preflight import preflight
from onnxrec.trainer.scorer import ModelScorer

log = logging.getLogger("onnxrec.train")
#: The rankers that read retrieval's score and rank as fields when trained on its candidates.
RETRIEVAL_FIELD_MODELS = ("fm", "linear")
#: The rankers that can read the interaction's context (``--context-fields``).
CONTEXT_FIELD_MODELS = ("fm", "deepfm", "linear", "twotower")


def column_mapping(cfg: TrainConfig) -> ColumnMapping:
    """The column options of ``cfg`` (``--user-col`` ...) as a :class:`ColumnMapping`."""
    return ColumnMapping(
        cfg.user_col, cfg.item_col, cfg.rating_col, cfg.time_col, tuple(cfg.user_features), tuple(cfg.item_features)
    )


def load_for_training(cfg: TrainConfig) -> tuple[Dataset, Path | None]:
    """The dataset ``cfg.data`` names, prepared with ``cfg``'s preprocessing and split options."""
    pre = PreprocessSpec(cfg.positive_threshold, cfg.min_user_interactions, cfg.min_item_interactions)
    split_spec = SplitSpec(kind=cast(SplitKind, cfg.split), num_negatives=cfg.eval_negatives, seed=cfg.seed)
    return resolve_data(
        cfg.data,
        pre,
        split_spec,
        columns=column_mapping(cfg),
        sep=cfg.sep,
        seed=cfg.seed,
        erasure=read_ledger(cfg.deletions),
    )


def _init_distributed(cfg: TrainConfig) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return True


def train(cfg: TrainConfig) -> Path:
    """Train the model ``cfg`` describes and write its run directory; returns the directory.

    Under ``torchrun --nproc_per_node N`` the same call trains data-parallel; rank 0 writes the run.
    """
    preflight(cfg)
    out = Path(cfg.out)
    started = _init_distributed(cfg)
    try:
        with reproducible(cfg.seed, cfg.threads, cfg.device) as threads:
            run = _train(cfg, out, threads)
        if started:
            dist.barrier()  # every rank returns once rank 0 has written the run
        return run
    finally:
        if started:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, threads: int) -> Path:
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    ds, data_dir = load_for_training(cfg)
    resume = load_checkpoint(Path(cfg.resume)) if cfg.resume else None
    if cfg.model == AUTO:
        trained, choice = select_model(cfg, lambda c, deadline: _fit_model(c, ds, None, rank, deadline))
    else:
        trained, choice = _fit_model(cfg, ds, resume, rank), None
    if rank != 0:
        return Path(cfg.out)
    model, pipeline, result = trained.model, trained.pipeline, trained.result
    if not result.best_state:
        raise TrainingError("no epoch was trained (is --epochs above the resumed checkpoint's epoch?)")
    blend = None
    if pipeline is not None and cfg.blend and not model.reads_retrieval:
        blend, by_weight = fit_pipeline_blend(pipeline, ds)
        pipeline.blend = blend
        log.info("blend: retrieval's score weighs %.1f in the final ranking (best on validation)", blend.weight)
    metrics = final_metrics(model, ds, cfg, pipeline)
    if blend is not None:
        metrics["blend"] = {**blend.to_dict(), "valid_full_ndcg@10_by_weight": by_weight}
    metrics["negatives"] = trained.negatives.describe()
    metrics["threads"] = threads
    metrics["ema"] = resolve_ema(cfg, trained.model_type)
    if choice is not None:
        metrics["auto"] = choice
    extra = {"blend": blend.to_dict()} if blend is not None else {}
    return _write_run(cfg, ds, data_dir, trained, metrics, extra)


@dataclass
class Trained:
    """One model's training: what the run directory is written from."""

    model_type: str
    model_cfg: dict[str, Any]
    loss: str
    model: Recommender
    result: FitResult
    opt: torch.optim.Optimizer
    negatives: NegativeSampler
    pipeline: PipelineScorer | None
    wall: float


def _fit_model(
    cfg: TrainConfig, ds: Dataset, resume: dict[str, Any] | None, rank: int, deadline: float | None = None
) -> Trained:
    """Build the model ``cfg`` (or ``resume``) names for ``ds`` and fit it; its initial weights come
    from ``cfg.seed`` alone, so each model ``--model auto`` tries starts as it would trained alone."""
    torch.manual_seed(cfg.seed)
    model_type, loss = resolve_model(cfg)
    if resume is not None:
        if resume["dataset"]["content_hash"] != ds.content_hash:
            raise TrainingError(f"{cfg.resume}: the checkpoint was trained on other data than --data {cfg.data}")
        model_type = resume["model_type"]
        mcfg_dict = resume["model_config"]
    else:
        mcfg_dict = config_to_dict(model_config(model_type, cfg, ds))
    pool = None
    if cfg.candidates_from:
        with torch.random.fork_rng():  # rebuilding the retrieval model draws initial weights: not from our stream
            pool = load_pool(Path(cfg.candidates_from), ds, cfg.candidates, cfg.device)
    if resume is None:
        mcfg_dict = with_ranker_fields(model_type, mcfg_dict, pool, cfg)
    model = build_model(model_type, mcfg_dict)
    check_model_memory(sum(p.numel() for p in model.parameters()), ds.num_users, ds.num_items)
    model.set_item_features({k: torch.from_numpy(v) for k, v in ds.item_features.items()})
    if model.reads_item_text and ds.item_text is not None:
        model.set_item_text(torch.from_numpy(ds.item_text))
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
    negatives = NegativeSampler(ds.num_items, pool, cfg.hard_negatives)
    if pool is not None and rank == 0:
        log.info(
            "negatives: %.0f%% from %s's top %d per user, the rest uniform",
            100 * cfg.hard_negatives,
            cfg.candidates_from,
            cfg.candidates,
        )
    pipeline = PipelineScorer(pool.retrieval, model, ds, cfg.candidates, cfg.device) if pool else None
    t0 = time.perf_counter()
    result, opt = fit(
        model,
        ds,
        cfg,
        loss,
        start_epoch=int(resume["epoch"]) if resume else 0,
        optimizer_state=resume.get("optimizer") if resume else None,
        on_epoch=_log_epoch,
        negatives=negatives,
        scorer=pipeline,
        deadline=deadline,
        ema=resolve_ema(cfg, model_type),
    )
    wall = time.perf_counter() - t0
    return Trained(model_type, mcfg_dict, loss, model, result, opt, negatives, pipeline, wall)


def _log_epoch(record: dict[str, Any]) -> None:
    v = record["valid"]
    log.info(
        "epoch %d: loss %.4f, %s ex/s, valid sampled HR@10 %.4f NDCG@10 %.4f, full HR@10 %.4f NDCG@10 %.4f",
        record["epoch"],
        record["loss"],
        f"{record['examples_per_second']:,.0f}",
        v["sampled"].get("hr@10", float("nan")),
        v["sampled"].get("ndcg@10", float("nan")),
        v["full"].get("hr@10", float("nan")),
        v["full"].get("ndcg@10", float("nan")),
    )


def with_retrieval_fields(
    model_type: str, mcfg: dict[str, Any], pool: CandidatePool, cfg: TrainConfig
) -> dict[str, Any]:
    """``mcfg`` of a ranker trained on ``pool``: with retrieval's score and rank as fields for the models
    that read them (fm, linear) unless ``--no-retrieval-fields``; unchanged for the others."""
    if not cfg.retrieval_fields or model_type not in RETRIEVAL_FIELD_MODELS:
        return mcfg
    if pool.features is None:
        raise TrainingError(
            f"--candidates-from {cfg.candidates_from}: retrieval's scores come from a factorized model "
            f"({pool.source['model_type']} is not); train with --no-retrieval-fields"
        )
    return {**mcfg, "retrieval": asdict(pool.features.fields_config())}


def with_ranker_fields(
    model_type: str, mcfg: dict[str, Any], pool: CandidatePool | None, cfg: TrainConfig
) -> dict[str, Any]:
    """``mcfg`` with the fields a ranker reads besides users and items: retrieval's score and rank when
    trained on ``pool``, the interaction's context with ``--context-fields``."""
    if pool is not None:
        mcfg = with_retrieval_fields(model_type, mcfg, pool, cfg)
    return with_context_fields(model_type, mcfg, cfg) if cfg.context_fields else mcfg


def with_context_fields(model_type: str, mcfg: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """``mcfg`` reading the interaction's context (``--context-fields``): rankers of a pipeline only."""
    if model_type not in CONTEXT_FIELD_MODELS:
        raise ConfigError(
            f"--context-fields: {model_type} reads no context; use one of {', '.join(CONTEXT_FIELD_MODELS)}"
        )
    if not cfg.candidates_from:
        raise ConfigError(
            "--context-fields: the context is a ranker's field; train on a retrieval run's --candidates-from"
        )
    return {**mcfg, "context": True}


def final_metrics(model: Recommender, ds: Dataset, cfg: TrainConfig, pipeline: PipelineScorer | None) -> dict[str, Any]:
    """The trained model's validation and test metrics; for a model trained on a retrieval run's
    candidates, those of the pipeline (with the retrieval stage's recall), and the model's own under
    ``standalone``. ``evaluated_as`` says which."""
    stages = ("valid", "test")
    if pipeline is None:
        scorer = ModelScorer(model, ds, cfg.device)
        return {**{stage: evaluate(scorer, ds, stage, ks=cfg.eval_ks) for stage in stages}, "evaluated_as": "model"}
    piped = {stage: evaluate_pipeline(pipeline, ds, stage, ks=cfg.eval_ks) for stage in stages}
    if model.reads_retrieval:  # it scores candidate lists only
        return {**piped, "evaluated_as": "pipeline", "retrieval_fields": True}
    scorer = ModelScorer(model, ds, cfg.device)
    own = {stage: evaluate(scorer, ds, stage, ks=cfg.eval_ks) for stage in stages}
    return {**piped, "evaluated_as": "pipeline", "standalone": own}


def _write_run(
    cfg: TrainConfig,
    ds: Dataset,
    data_dir: Path | None,
    trained: Trained,
    metrics: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    model_type, result = trained.model_type, trained.result
    out = Path(cfg.out)
    summary = {
        "model_type": model_type,
        "loss": trained.loss,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.epochs),
        "train_seconds": round(trained.wall, 2),
        "examples_per_second": round(result.examples_per_second, 1),
        **metrics,
    }
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        if data_dir is None:
            save_dataset(ds, tmp / "dataset")
        ckpt = {
            "format": FORMAT,
            "onnxrec_version": __version__,
            "model_type": model_type,
            "model_config": trained.model_cfg,
            "state_dict": {k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items()},
            "optimizer": trained.opt.state_dict(),
            "epoch": result.epochs[-1]["epoch"] if result.epochs else 0,
            "best_epoch": result.best_epoch,
            "feature_spec": ds.feature_spec.to_dict(),
            "dataset": {
                "path": "dataset" if data_dir is None else str(data_dir.resolve()),
                "name": ds.name,
                "content_hash": ds.content_hash,
                "counts": ds.meta.get("counts", {}),
            },
            "user_ids": [str(u) for u in ds.user_ids],
            "item_ids": [str(i) for i in ds.item_ids],
            "metrics": summary,
            "train_config": cfg.to_dict(),
            **extra,
        }
        save_checkpoint(ckpt, tmp / CHECKPOINT_FILE)
        (tmp / "config.toml").write_text(tomli_w.dumps({"train": cfg.to_dict()}))
        with (tmp / "metrics.jsonl").open("w") as fh:
            for record in result.epochs:
                fh.write(json.dumps(record) + "\n")
        (tmp / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out


def run_summary(run: Path) -> dict[str, Any]:
    """The eval.json of a run directory."""
    path = Path(run) / "eval.json"
    if not path.is_file():
        raise TrainingError(f"{run}: not a complete run directory (no eval.json)")
    return dict(json.loads(path.read_text()))
