"""Training curves of a run (``vcq plot-metrics``): one panel per group of ``metrics.jsonl`` columns.

Panels: the training loss; the validation metrics (every ``val_*`` column: ``val_bits_per_token``
of AR runs, ``val_l1`` / ``val_psnr`` of tokenizers) beside their training counterparts
(``train_bits_per_token``, ``l1``, ``psnr``); the learning rate. Seaborn's whitegrid style.
"""

from __future__ import annotations

from pathlib import Path

from entropy_cliff.errors import EntropyCliffError
from vcq.metrics_log import METRICS_FILE, log_rows

# validation column -> its training counterpart
PAIRS = {"val_bits_per_token": "train_bits_per_token", "val_l1": "l1", "val_psnr": "psnr"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN/metrics.jsonl`` (a half-written last row is skipped)."""
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        raise EntropyCliffError(f"{run_dir}: no {METRICS_FILE} (not a run directory, or no step logged yet)")
    rows = [row for _, row in log_rows(p)]
    if not rows:
        raise EntropyCliffError(f"{p}: no metric rows yet")
    return rows


def plot_metrics(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the training curves of ``run_dir`` to ``out`` (default ``RUN/metrics.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from entropy_cliff.io import atomic_path, prepare_output

    rows = read_metrics(run_dir)
    out = prepare_output(Path(out) if out else Path(run_dir) / "metrics.png", "file")
    steps = [r["step"] for r in rows]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    vals = [k for k in PAIRS if any(k in r for r in rows)]
    panels = [("loss", ["loss"])] + [(k.removeprefix("val_"), [PAIRS[k], k]) for k in vals] + [("learning rate", ["lr"])]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            x, y = series(k)
            if x:
                ax.plot(x, y, marker="o" if k.startswith("val_") else None, ms=3,
                        label={"loss": "train loss", "lr": "lr"}.get(k, k.replace("_", " ")))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_xlim(0, max(steps))
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{Path(run_dir).name}: training curves ({len(rows)} logged steps)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    sns.reset_orig()
    return out
