"""CLI commands of the export stage: ``export`` and ``inspect``; they parse options and call the stage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from onnxrec.errors import ExportError
from onnxrec.exporter.index import (
    AUTO_MIN_ITEMS,
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_M,
    DEFAULT_MIN_RECALL,
    DEFAULT_NPROBE,
    HNSW_GRAPHS,
    INDEX_KINDS,
)
from onnxrec.exporter.spec import DEFAULT_ATOL, DEFAULT_CANDIDATES, DEFAULT_RTOL


class NonNegativeNumber(click.ParamType):
    """A finite number >= 0; anything else is the one-line ``error: option 'rtol': ...`` (exit 2)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise ExportError(f"option '{param.name if param else '?'}': {str(value)!r} is not a number >= 0")
        return number


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--repository", required=True, type=click.Path(path_type=Path), help="Model repository directory.")
@click.option("--name", required=True, help="Model name in the repository.")
@click.option("--version", type=int, default=None, help="Version number (default: the next one).")
@click.option("--k-max", type=int, default=100, show_default=True, help="Top-k computed in the graphs.")
@click.option("--max-batch", type=int, default=256, show_default=True, help="Largest batch the parity check uses.")
@click.option(
    "--rtol",
    type=NonNegativeNumber(),
    default=DEFAULT_RTOL,
    show_default=True,
    help="Parity: onnxruntime's scores may differ from PyTorch's by atol + rtol x their largest |score|.",
)
@click.option(
    "--atol",
    type=NonNegativeNumber(),
    default=DEFAULT_ATOL,
    show_default=True,
    help="Parity: the absolute part of that bound (what rows of scores near 0 may differ by).",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["fp16", "int8"]),
    help="Also write an fp16 (GPU) or int8 (CPU) variant; repeatable.",
)
@click.option(
    "--index",
    "index_kind",
    type=click.Choice(INDEX_KINDS),
    default="auto",
    show_default=True,
    help=f"Nearest-neighbour index over the item vectors (MF, two-tower): auto = hnsw from {AUTO_MIN_ITEMS:,} "
    "items on, exact (no index) below and for models that do not factor into vectors.",
)
@click.option("--index-m", type=int, default=DEFAULT_M, show_default=True, help="HNSW: links per item (M).")
@click.option(
    "--index-ef-construction",
    type=int,
    default=DEFAULT_EF_CONSTRUCTION,
    show_default=True,
    help="HNSW: candidates kept while building (higher: better graph, slower build).",
)
@click.option(
    "--index-ef-search",
    type=int,
    default=DEFAULT_EF_SEARCH,
    show_default=True,
    help="HNSW: candidates kept while searching (higher: better recall, slower queries).",
)
@click.option(
    "--index-graph",
    type=click.Choice(HNSW_GRAPHS),
    default="auto",
    show_default=True,
    help="HNSW: the graph built by inner product, or by L2 over MIPS-lifted vectors (better on trained factors); "
    "auto builds the first and, when its recall@10 falls short of --min-recall, the second too (twice the build). "
    "IVF: lists by L2 over lifted vectors (auto) or by inner product.",
)
@click.option(
    "--index-only",
    is_flag=True,
    help="With an index: write the user-vector graphs and the index, no catalog-sized exact graph (catalogs "
    "past about 4M 64-dim items need it; SimilarItems and Explain are then refused).",
)
@click.option(
    "--index-nlist", type=int, default=0, help="IVF: number of lists (default: about 4 x sqrt(number of items))."
)
@click.option(
    "--index-nprobe", type=int, default=DEFAULT_NPROBE, show_default=True, help="IVF: lists searched per query."
)
@click.option(
    "--min-recall",
    type=NonNegativeNumber(),
    default=DEFAULT_MIN_RECALL,
    show_default=True,
    help="The index's recall@10 against the exact top-10 (1,000 sampled users) below which the export fails.",
)
@click.option(
    "--ranker",
    type=click.Path(path_type=Path),
    default=None,
    help="A second run (linear, fm, deepfm, ...) that ranks what RUN retrieves: a pipeline version.",
)
@click.option(
    "--candidates",
    type=int,
    default=DEFAULT_CANDIDATES,
    show_default=True,
    help="With --ranker: items retrieved per user for the ranker (requests may ask for fewer).",
)
@click.option(
    "--new-items",
    type=click.Path(path_type=Path),
    default=None,
    help="A CSV/Parquet of items added after training (item_id and the dataset's text columns): served from their "
    "text alone (a two-tower or sasrec run trained with --item-text).",
)
def export_command(
    run: Path,
    repository: Path,
    name: str,
    version: int | None,
    k_max: int,
    max_batch: int,
    rtol: float,
    atol: float,
    precisions: tuple[str, ...],
    index_kind: str,
    index_m: int,
    index_ef_construction: int,
    index_ef_search: int,
    index_graph: str,
    index_only: bool,
    index_nlist: int,
    index_nprobe: int,
    min_recall: float,
    ranker: Path | None,
    candidates: int,
    new_items: Path | None,
) -> None:
    """Export a training run to ONNX into REPOSITORY/NAME/VERSION, with parity (and an index's recall) checked."""
    from onnxrec.exporter.export import ExportOptions, export
    from onnxrec.exporter.inspect import format_manifest, inspect_version

    opts = ExportOptions(
        k_max=k_max,
        max_batch=max_batch,
        atol=atol,
        rtol=rtol,
        precisions=precisions,
        index=index_kind,
        index_m=index_m,
        index_ef_construction=index_ef_construction,
        index_ef_search=index_ef_search,
        index_graph=index_graph,
        index_only=index_only,
        index_nlist=index_nlist,
        index_nprobe=index_nprobe,
        min_recall=min_recall,
        ranker=ranker,
        candidates=candidates,
        new_items=new_items,
    )
    out = export(run, repository, name, version, opts)
    click.echo(format_manifest(inspect_version(out)))
    click.echo(f"\nwrote {out}")


@click.command("inspect")
@click.argument("version_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect_command(version_dir: Path, as_json: bool) -> None:
    """Show a model version's signature, metrics and parity report (files verified against hashes)."""
    from onnxrec.exporter.inspect import format_manifest, inspect_version

    manifest = inspect_version(version_dir)
    click.echo(json.dumps(manifest, indent=2) if as_json else format_manifest(manifest))


@click.command("forget")
@click.option("--repository", required=True, type=click.Path(path_type=Path), help="Model repository directory.")
@click.option("--name", required=True, help="Model name in the repository.")
@click.option("--user", "user_id", required=True, help="Raw user id to erase.")
def forget_command(repository: Path, name: str, user_id: str) -> None:
    """Erase a user: a new version of NAME without them, and a line in the repository's deletion ledger
    that data prepare and train honour."""
    from onnxrec.exporter.forget import LEDGER, forget

    done = forget(repository, name, user_id)
    if done.version_dir is None:
        click.echo(f"the latest version of {name} does not know user {user_id}; recorded in {repository / LEDGER}")
    else:
        click.echo(
            f"wrote {done.version_dir} without user {user_id} ({done.rows_zeroed} graph tables cleared); "
            f"recorded in {repository / LEDGER}"
        )
