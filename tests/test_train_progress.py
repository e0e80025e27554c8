"""Training progress: plain periodic lines, never carriage returns, when stderr is not a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from onnxrec.trainer.progress import Progress


def test_a_stream_that_is_not_a_terminal_gets_plain_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="onnxrec.train"):
        progress = Progress(3, "epoch 1/2", stream=stream, interval=0.0)
        for b in (1, 2, 3):
            progress.update(b, 64 * b, 1.0 / b)
        progress.close()
    assert stream.getvalue() == "", "nothing is drawn on a stream that is not a terminal"
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(",")[0] for ln in lines] == [f"epoch 1/2: batch {b}/3" for b in (1, 2, 3)]
    assert "loss 0.5000" in lines[1]
    assert not any("\r" in ln for ln in lines)


def test_plain_lines_come_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="onnxrec.train"):
        progress = Progress(1000, "epoch 1/1", stream=io.StringIO(), interval=3600.0)
        for b in range(1, 1001):
            progress.update(b, b, 0.1)
        progress.close()
    assert caplog.records == []


def test_disabled_progress_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="onnxrec.train"):
        progress = Progress(2, "epoch 1/1", enabled=False, stream=stream, interval=0.0)
        progress.update(1, 1, 0.1)
        progress.close()
    assert stream.getvalue() == "" and caplog.records == []
