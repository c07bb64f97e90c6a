"""Every figure and table listed in figures/README.md, from committed inputs (what `make figures` runs).

    python analysis/make_figures.py [--out figures] [--only NAME ...]

Inputs: the embedded demo dumps (entropy_cliff/data/demo_*.npy), the replication's training dumps
(results/replication/*/train/tokens.npy), figures/replication.json and figures/language.json (read,
never written). No training. See :mod:`entropy_cliff.paper_figures`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entropy_cliff.paper_figures import OUTPUTS, Inputs, build  # noqa: E402

REPLICATION_ORDER = ("constant", "constant_half", "linear", "cosine", "power")


def default_inputs(root: Path) -> Inputs:
    """The committed inputs: demo dumps, replication dumps and results, and the two summaries in figures/."""
    figures = root / "figures"
    data, rep = root / "entropy_cliff" / "data", root / "results" / "replication"
    dumps = {k: rep / k / "train" / "tokens.npy" for k in REPLICATION_ORDER}
    return Inputs(demo={k: data / f"demo_{k}.npy" for k in ("constant", "cosine")},
                  replication_dumps={k: p for k, p in dumps.items() if p.is_file()},
                  replication=figures / "replication.json", language=figures / "language.json",
                  replication_results=rep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "figures")
    ap.add_argument("--only", nargs="*", choices=list(OUTPUTS))
    args = ap.parse_args()
    t0 = time.perf_counter()
    for name, res in build(default_inputs(ROOT), args.out, args.only).items():
        print(f"{name}: {res if isinstance(res, str) else ', '.join(str(p.relative_to(args.out)) for p in res)}")
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
