"""The training CLI as a new user meets it: real commands in a subprocess, bad input included."""

from __future__ import annotations

import json
import os
import re
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


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ (INFO|WARNING) ")


def assert_clean_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    # log lines (INFO, and WARNING such as "no timestamp column") may come first; the error is one line
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _ml100k_csv(ml100k_dir: Path, path: Path, header: str, rows: int = 6000, sep: str = ",") -> Path:
    """The first ``rows`` lines of the real u.data under a header (a small, real log)."""
    lines = (ml100k_dir / "u.data").read_text().splitlines()[:rows]
    path.write_text(header + "\n" + "\n".join(sep.join(ln.split("\t")) for ln in lines) + "\n")
    return path


def test_train_detects_the_columns_of_a_csv_and_says_which(ml100k_dir: Path, tmp_path: Path) -> None:
    log = _ml100k_csv(ml100k_dir, tmp_path / "ratings.csv", "userId,movieId,rating,timestamp")
    run = tmp_path / "run"
    p = onnxrec("train", "--data", str(log), "--out", str(run), "--epochs", "1", "--model", "mf", "--dim", "8")
    assert p.returncode == 0, p.stderr
    assert "columns user 'userId' (detected), item 'movieId' (detected)" in p.stderr
    assert "timestamp 'timestamp' (detected)" in p.stderr
    columns = json.loads((run / "dataset" / "dataset.json").read_text())["columns"]
    assert columns["timestamp"] == "timestamp" and columns["time_order"] == "timestamp"


@pytest.mark.slow
def test_train_takes_the_same_column_options_as_data_prepare(ml100k_dir: Path, tmp_path: Path) -> None:
    log = _ml100k_csv(ml100k_dir, tmp_path / "log.tsv", "who\twhat\tstars\twhen", sep="\t")
    run = tmp_path / "run"
    args = ["--epochs", "1", "--model", "mf", "--dim", "8", "--no-progress"]
    p = onnxrec("train", "--data", str(log), "--out", str(run), *args)
    assert_clean_error(p, "no user column (looked for user_id, userId, user; columns are: who, what, stars, when)")
    cols = ["--user-col", "who", "--item-col", "what", "--rating-col", "stars", "--time-col", "when", "--sep", "tab"]
    p = onnxrec("train", "--data", str(log), "--out", str(run), *args, *cols, "--positive-threshold", "4")
    assert p.returncode == 0, p.stderr
    meta = json.loads((run / "dataset" / "dataset.json").read_text())
    assert meta["columns"] == {
        "user": "who",
        "item": "what",
        "rating": "stars",
        "timestamp": "when",
        "detected": [],
        "time_order": "timestamp",
    }
    assert meta["preprocess"]["positive_threshold"] == 4
    prep = onnxrec("data", "prepare", str(log), "--out", str(tmp_path / "ds"), *cols, "--threshold", "4")
    assert prep.returncode == 0, prep.stderr
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["content_hash"] == meta["content_hash"]


@pytest.mark.parametrize(
    ("field", "bad", "needle"),
    [
        (3, "oops", "line 2719: timestamp column 'timestamp' (found by its name"),
        (0, "NaN", "line 2719: user column 'user_id' holds 'NaN', a missing-value marker, not a user id"),
        (1, "", "line 2719: item column 'item_id' is empty, not a item id"),
    ],
    ids=["bad-timestamp", "nan-user", "empty-item"],
)
def test_train_refuses_bad_rows_with_one_line(
    ml100k_dir: Path, tmp_path: Path, field: int, bad: str, needle: str
) -> None:
    log = _ml100k_csv(ml100k_dir, tmp_path / "log.csv", "user_id,item_id,rating,timestamp", rows=3000)
    lines = log.read_text().splitlines()
    cells = lines[2718].split(",")
    cells[field] = bad
    lines[2718] = ",".join(cells)
    log.write_text("\n".join(lines) + "\n")
    p = onnxrec("train", "--data", str(log), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert_clean_error(p, needle)
    assert not (tmp_path / "run").exists()


def test_column_options_on_a_movielens_folder_are_refused(ml100k_dir: Path, tmp_path: Path) -> None:
    p = onnxrec("train", "--data", str(ml100k_dir), "--out", str(tmp_path / "r"), "--time-col", "ts")
    assert_clean_error(p, "apply to CSV/TSV/Parquet logs only")


def test_a_missing_data_path_is_refused_before_torch_loads(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "log.csv"
    p = onnxrec("train", "--data", str(missing), "--out", str(tmp_path / "r"))
    assert_clean_error(p, f"{missing}: no such file or directory")
    # the same command in-process: the error comes before anything imports torch (or numpy, pyarrow)
    script = (
        "import sys\n"
        "from onnxrec.cli import main\n"
        f"code = main(['train', '--data', {str(missing)!r}, '--out', {str(tmp_path / 'r')!r}], standalone_mode=False)\n"
        "print(code, any(m in sys.modules for m in ('torch', 'numpy', 'pyarrow')))\n"
    )
    q = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    assert q.stdout.split() == ["2", "False"], q.stdout + q.stderr
    for args, needle in (
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--resume", str(tmp_path / "gone")], "no such run directory"),
        (["--optimizer", "sgd"], "unknown optimizer"),
    ):
        cmd = ["train", "--out", str(tmp_path / "r"), *args]
        q = subprocess.run(
            [
                sys.executable,
                "-c",
                script.replace(f"['train', '--data', {str(missing)!r}, '--out', {str(tmp_path / 'r')!r}]", repr(cmd)),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert q.stdout.split() == ["2", "False"] and needle in q.stderr, q.stdout + q.stderr


# a small, fast training of the log given next (60 items: 20 evaluation negatives fit)
TRAIN_SMALL = [sys.executable, "-m", "onnxrec", "train", "--model", "mf", "--dim", "8", "--batch-size", "64"]
TRAIN_SMALL += ["--eval-negatives", "20", "--data"]


def _small_log(tmp_path: Path) -> Path:
    out = tmp_path / "log.parquet"
    p = onnxrec("data", "synth", "--out", str(out), "--users", "120", "--items", "60", "--per-user", "20")
    assert p.returncode == 0, p.stderr
    return out


def test_progress_in_a_log_file_is_plain_lines(tmp_path: Path) -> None:
    log = _small_log(tmp_path)
    stderr_file = tmp_path / "train.log"
    with stderr_file.open("w") as fh:
        p = subprocess.run(
            [*TRAIN_SMALL, str(log), "--out", str(tmp_path / "run"), "--epochs", "2"],
            stdout=subprocess.PIPE,
            stderr=fh,
            text=True,
            check=False,
            timeout=600,
        )
    raw = stderr_file.read_bytes()  # bytes: reading text would turn every carriage return into a newline
    assert p.returncode == 0, raw.decode(errors="replace")
    assert b"\r" not in raw and b"\x1b[" not in raw
    assert b"epoch 1: loss" in raw and b"epoch 2: loss" in raw


def test_progress_on_a_terminal_is_a_bar(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    log = _small_log(tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(
        [*TRAIN_SMALL, str(log), "--out", str(tmp_path / "run"), "--epochs", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")
    text = b"".join(chunks).decode(errors="replace")
    bar = [fragment for fragment in text.split("\r") if "epoch 1/1:" in fragment]
    assert bar and ("batch/s" in text or "s/batch" in text), text  # tqdm redraws with carriage returns
