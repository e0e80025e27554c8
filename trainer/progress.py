"""Training progress: a tqdm bar on a terminal, plain periodic log lines anywhere else.

A bar redraws itself with carriage returns, which a log file keeps as hundreds of fragments per
epoch; when the stream is not a terminal, :class:`Progress` logs one line every ``interval``
seconds instead (the epoch's summary line comes from the caller).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

#: Seconds between two plain progress lines.
PLAIN_INTERVAL = 30.0

log = logging.getLogger("onnxrec.train")


class Progress:
    """Progress of one epoch's ``total`` batches, shown as ``desc``.

    ``stream`` (default: stderr) decides the form: a terminal gets a tqdm bar, anything else a
    plain log line every ``interval`` seconds. ``enabled=False`` shows nothing.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self.total = total
        self.desc = desc
        self.interval = interval
        stream = stream if stream is not None else sys.stderr
        self.terminal = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self.plain = enabled and not self.terminal
        self._bar = (
            tqdm(total=total, desc=desc, unit="batch", file=stream, leave=False, dynamic_ncols=True)
            if self.terminal
            else None
        )
        self._started = self._last = time.monotonic()

    def update(self, batches: int, examples: int, loss: float) -> None:
        """``batches`` done so far this epoch, ``examples`` seen, the mean ``loss`` so far."""
        now = time.monotonic()
        rate = examples / max(now - self._started, 1e-9)
        if self._bar is not None:
            self._bar.update(batches - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate:,.0f}", refresh=False)
        elif self.plain and now - self._last >= self.interval:
            self._last = now
            log.info("%s: batch %d/%d, loss %.4f, %s ex/s", self.desc, batches, self.total, loss, f"{rate:,.0f}")

    def close(self) -> None:
        """End the bar (a no-op for plain lines)."""
        if self._bar is not None:
            self._bar.close()
