"""``onnxrec inspect``: a model version's signature, metrics and parity report, for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxrec.exporter.repository import read_manifest, verify_files


def inspect_version(version_dir: Path) -> dict[str, Any]:
    """The manifest of ``version_dir`` after checking every file against its hash."""
    manifest = read_manifest(Path(version_dir))
    verify_files(Path(version_dir), manifest)
    return manifest


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def format_manifest(m: dict[str, Any]) -> str:
    """Readable text: header, graphs with their tensors, metrics, parity, variants."""
    lines = [
        f"{m['name']} version {m['version']}: {m['model_type']}, {m['num_users']:,} users, {m['num_items']:,} items, "
        f"top-{m['k_max']} in graph, opset {m['opset']}, exported {m['created']} by onnxrec {m['onnxrec_version']}",
        "",
        "graphs:",
    ]
    for name, g in m["graphs"].items():
        ins = ", ".join(f"{t['name']}: {t['dtype']}{_shape(t['shape'])}" for t in g["inputs"])
        outs = ", ".join(f"{t['name']}: {t['dtype']}{_shape(t['shape'])}" for t in g["outputs"])
        lines.append(f"  {name:<24} ({ins}) -> ({outs})")
    test = m.get("metrics", {}).get("test", {})
    if test:
        lines += ["", "test metrics (from training):"]
        for view in ("sampled", "full"):
            if view in test:
                shown = ", ".join(
                    f"{k} {v:.4f}"
                    for k, v in test[view].items()
                    if k.split("@")[0] in ("hr", "ndcg", "mrr", "coverage")
                )
                lines.append(f"  {view:<8} {shown}")
    parity = m.get("parity", {})
    if "rtol" in parity:
        bound = f"|difference| <= {parity['atol']:g} + {parity['rtol']:g} x the graph's largest |score|"
    else:  # versions exported before relative tolerances
        bound = f"tolerance {parity.get('atol')}"
    lines += ["", f"parity with PyTorch (fp32, {bound}):"]
    for name, p in parity.get("graphs", {}).items():
        agree = f", top-10 agreement {p['topk_agreement']:.2%}" if p.get("topk_rows") else ""
        rel = f" ({p['max_rel_diff']:.2e} of the largest |score|)" if "max_rel_diff" in p else ""
        lines.append(
            f"  {name:<24} max abs diff {p['max_abs_diff']:.2e}{rel} over {p['rows']:,} rows{agree}, "
            f"batch sizes {p['batch_sizes']}"
        )
    variants = m.get("variants", {})
    if variants:
        lines += ["", "precision variants:"]
        for name, v in variants.items():
            q = v.get("quality", {})
            hr, ndcg = q.get("hr@10_change", float("nan")), q.get("ndcg@10_change", float("nan"))
            lines.append(
                f"  {name:<8} files {', '.join(v['files'])}; validation HR@10 change {hr:+.4f}, "
                f"NDCG@10 change {ndcg:+.4f}"
            )
    lines += ["", *format_index(m.get("index")), *format_stages(m.get("stages", []))]
    lines += ["", f"files ({len(m['files'])}, hashes verified): {', '.join(m['files'])}"]
    return "\n".join(lines)


def format_index(index: dict[str, Any] | None) -> list[str]:
    """The retrieval lines: exact (no index), or the index's type, parameters, memory, build time and recall."""
    if not index:
        return ["retrieval: exact (the recommend graphs score the whole catalog; no index)"]
    params = ", ".join(f"{k} {v}" for k, v in index.get("params", {}).items()) or "no parameters"
    recall = index.get("recall", {})
    return [
        f"retrieval: {index['type']} index {index['file']} over {index['num_items']:,} items x {index['dim']} dims "
        f"({index['metric']})",
        f"  parameters   {params}",
        f"  memory       {index['memory_bytes'] / 2**20:,.1f} MiB; built in {index['build_seconds']:.1f} s",
        f"  recall       @10 {recall.get('at10', float('nan')):.4f}, @100 {recall.get('at100', float('nan')):.4f} "
        f"over {recall.get('users', 0):,} users, seen items excluded "
        f"(at least {recall.get('min_recall_at10', float('nan')):g} @10 required)",
        *(
            ["  index only   no catalog-sized exact graph: Score reads the index's vectors; no SimilarItems, Explain"]
            if index.get("index_only")
            else []
        ),
    ]


def format_stages(stages: list[dict[str, Any]]) -> list[str]:
    """A pipeline version's stages (nothing for a one-stage version)."""
    if len(stages) < 2:
        return []
    lines = ["", "pipeline (what answers a Recommend, in order):"]
    for s in stages:
        extra = f", {s['candidates']} candidates" if "candidates" in s else ""
        lines.append(f"  {s['stage']:<10} {s['model_type']} ({', '.join(s['graphs'])}{extra}) from {s['run']}")
        if s.get("retrieval_fields"):
            lines.append("             reads retrieval's score and rank of each candidate as fields")
        if s.get("context_fields"):
            lines.append("             reads the interaction's context (hour, weekday, time since the last one)")
        if s.get("blend"):
            weight = s["blend"]["weight"]
            lines.append(f"             blended with retrieval's score at weight {weight} (chosen on validation)")
    return lines
