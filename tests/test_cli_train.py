"""The training CLI as a new user meets it: real commands in a subprocess, bad input included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def onnxrec(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxrec", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]


def test_prepare_then_train_then_evaluate(ml100k_dir: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ml100k"
    p = onnxrec("data", "prepare", str(ml100k_dir), "--out", str(ds))
    assert p.returncode == 0, p.stderr
    assert "943 users, 1,682 items, 100,000 interactions" in p.stdout
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["split"]["kind"] == "leave_one_out" and meta["counts"]["test"] == 943
    run = tmp_path / "run"
    t = onnxrec("train", "--data", str(ds), "--out", str(run), "--epochs", "1", "--no-progress", "--model", "mf")
    assert t.returncode == 0, t.stderr
    assert "test sampled HR@10" in t.stdout
    e = onnxrec("evaluate", str(run), "--json")
    assert e.returncode == 0, e.stderr
    report = json.loads(e.stdout)
    assert set(report["models"]) == {"mf", "popularity", "itemknn"}
    for model in report["models"].values():
        assert {"hr@10", "ndcg@10", "recall@10", "precision@10", "f1@10", "mrr@10", "map@10"} <= set(model["sampled"])
        assert "coverage@10" in model["full"]
    table = onnxrec("evaluate", str(run), "--no-baselines", "--k", "5,10")
    assert table.returncode == 0 and "sampled/hr@5" in table.stdout


def test_config_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text('[train]\nepochs = 1\nmodel = "mf"\nbogus = 3\n')
    p = onnxrec("train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert_clean_error(p, "unknown option(s) bogus")
    p = onnxrec("train", "--out", str(tmp_path / "r"), env={"ONNXREC_TRAIN_EPOCHS": "many"})
    assert_clean_error(p, "'epochs'")
    p = onnxrec("train", "--out", str(tmp_path / "r"), env={"ONNXREC_TRAIN_NOPE": "1"})
    assert_clean_error(p, "ONNXREC_TRAIN_NOPE")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        (None, [], "no such file"),
        ("user_id item_id\n1 2\n", [], "wrong separator"),
        ("", [], "empty"),
        ("user_id,item_id\n1,2\n", ["--rating-col", "stars"], "no column 'stars'"),
        ("user_id,item_id\n1,2\n1,3\n2,2\n", [], "too small to split"),
    ],
    ids=["missing-file", "wrong-separator", "empty-log", "unknown-column", "too-small"],
)
def test_bad_logs_give_one_line_and_exit_2(tmp_path: Path, content: str | None, extra: list[str], needle: str) -> None:
    log = tmp_path / "log.csv"
    if content is not None:
        log.write_text(content)
    out = tmp_path / "prepared"
    p = onnxrec("data", "prepare", str(log), "--out", str(out), *extra)
    assert_clean_error(p, needle)
    assert not out.exists()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


def test_train_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert_clean_error(onnxrec("train", "--data", str(tmp_path / "none.csv"), "--out", str(run)), "no such file")
    assert_clean_error(onnxrec("train", "--model", "transformer", "--out", str(run)), "unknown model")
    assert_clean_error(onnxrec("train", "--epochs", "0", "--out", str(run)), "epochs")
    p = onnxrec("train", "--epochs", "2", "--temperature", "1e-45", "--out", str(run), "--no-progress")
    assert_clean_error(p, "loss became")
    assert not run.exists()
    assert_clean_error(onnxrec("evaluate", str(tmp_path)), "not a run directory")
    assert_clean_error(
        onnxrec("train", "--data", "movielens-20m", "--out", str(run), env={"ONNXREC_DATA_HOME": str(tmp_path)}),
        "onnxrec data fetch movielens-20m",
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    p = onnxrec("--debug", "train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r"))
    assert p.returncode != 0
    assert "Traceback" in p.stderr


def test_synth_command(tmp_path: Path) -> None:
    out = tmp_path / "log.parquet"
    p = onnxrec("data", "synth", "--out", str(out), "--users", "50", "--items", "40")
    assert p.returncode == 0, p.stderr
    assert out.is_file() and (tmp_path / "log.users.parquet").is_file()
    assert_clean_error(onnxrec("data", "synth", "--out", str(tmp_path / "x.txt")), "x.txt")
