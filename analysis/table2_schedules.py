"""Paper Table 2: schedules, mean K, BPP, theoretical t* -- and, given token dumps, measured t*.

    python analysis/table2_schedules.py [--N 1.28e6] [--dumps a.npy b.npy ...] [--out figures/table2.csv]

The theoretical t* comes from C(t) (docs/formulas.md); measured t* (budget, threshold, sustained)
come from `entropy_cliff.report.measure_corpus` on each dump, which takes K_t from its sidecar
exactly as `entropy-cliff measure` does.
"""

import argparse
from pathlib import Path

import pandas as pd

from entropy_cliff import theory
from entropy_cliff.io import write_text_atomic
from entropy_cliff.report import measure_corpus
from entropy_cliff.schedules import paper_table2


def theory_rows(N: int, length: int = 256, kmin: int = 2) -> list[dict]:
    rows = []
    for s in paper_table2(length, kmin):
        rows.append({"schedule": s.label, "source": f"theory, N={N:,}", "K_min": s.kmin, "K_max": s.kmax,
                     "mean_K": round(s.mean_K, 1), "bpp": round(s.bpp(256, 256), 4),
                     "t_star_theory": theory.t_star(N, s.K)})
    return rows


def measured_row(path: Path) -> dict:
    r = measure_corpus(path, progress=False)
    return {"schedule": r.label, "source": f"measured: {path} (N={r.N:,}; K_t from {r.K_source.kind})", "K_min": int(r.K.min()),
            "K_max": int(r.K.max()), "mean_K": round(float(r.K.mean()), 1), "bpp": None, **r.t_stars()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=theory.parse_count, default=1_280_000)
    ap.add_argument("--dumps", nargs="*", type=Path, default=[])
    ap.add_argument("--out", default="figures/table2.csv")
    args = ap.parse_args()
    df = pd.DataFrame(theory_rows(args.N) + [measured_row(p) for p in args.dumps])
    write_text_atomic(args.out, df.to_csv(index=False))
    print(df.to_string(index=False))
