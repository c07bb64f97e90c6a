"""``RUN/metrics.jsonl``: the per-step log of a training run, one JSON object a line.

Written by :func:`vcq.train.train`; read by ``vcq plot-metrics`` (:mod:`vcq.plots`) without
importing torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def log_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(line, row)`` for every complete row of a metrics log; blank lines and the half-written
    last row an interruption may leave are skipped."""
    for ln in Path(path).read_text().splitlines():
        try:
            yield ln, json.loads(ln)
        except json.JSONDecodeError:
            continue
