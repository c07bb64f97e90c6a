"""Progress of long loops (reading dumps, measuring, training steps, sampled tokens, tokenized batches).

On a terminal (stderr is a tty) a tqdm bar; elsewhere (SLURM, nohup, a pipe) plain lines such as
``train: step 120/500 (24%), 3.1 step/s, eta 2m03s, loss 0.1234`` at most every ``every_s``
seconds and at the end, so a log file shows how a job is doing. ``quiet`` silences both.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PLAIN_EVERY_S = 30.0


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class Progress:
    """A context manager counting ``update(n)`` calls up to ``total``; ``postfix(**values)`` sets
    the values shown after the rate (e.g. the loss)."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "it", quiet: bool = False,
                 stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.values = every_s, {}
        self.t0 = self.last = time.perf_counter()
        self.n0 = initial
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        self.plain = not quiet and not tty
        if not quiet and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc or None, unit=unit, file=self.stream,
                            dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(exc[0] is None)

    def postfix(self, **values: Any) -> None:
        self.values = values
        if self.bar is not None:
            self.bar.set_postfix(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain and (time.perf_counter() - self.last >= self.every_s):
            self._line()

    def line(self) -> str:
        """The plain progress line for the current count."""
        dt = time.perf_counter() - self.t0
        rate = (self.n - self.n0) / dt if dt > 0 else float("nan")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", eta {_duration((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.values.items())
        return f"{self.desc}: {self.unit} {self.n}/{self.total}{pct}, {rate:.3g} {self.unit}/s{eta}{extra}"

    def _line(self) -> None:
        self.last = time.perf_counter()
        print(self.line(), file=self.stream, flush=True)

    def close(self, finished: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.plain and finished and self.n > self.n0:
            self._line()
        self.plain = False
