"""Paper Table 2: schedules, mean K, BPP, theoretical t* -- and, given token dumps, measured t*.

    python analysis/table2_schedules.py [--N 1.28e6] [--dumps a.npy b.npy ...] [--out figures/table2.csv]

The theoretical t* comes from C(t) (SPEC §3); measured t* (budget and threshold definitions) come
from `entropy_cliff.measure` on each dump, whose sidecar names its schedule.
"""

import argparse
from pathlib import Path

import pandas as pd

from entropy_cliff import theory
from entropy_cliff.io import load_tokens, read_sidecar, write_text_atomic
from entropy_cliff.measure import measure
from entropy_cliff.schedules import Schedule, paper_table2


def theory_rows(N: int, length: int = 256, kmin: int = 2) -> list[dict]:
    rows = []
    for s in paper_table2(length, kmin):
        rows.append({"schedule": s.label, "source": f"theory, N={N:,}", "K_min": s.kmin, "K_max": s.kmax,
                     "mean_K": round(s.mean_K, 1), "bpp": round(s.bpp(256, 256), 4),
                     "t_star_theory": theory.t_star(N, s.K)})
    return rows


def measured_row(path: Path) -> dict:
    X = load_tokens(path)
    meta = read_sidecar(path) or {}
    m = measure(X, meta.get("K"))
    label = Schedule.from_dict(meta["schedule"], m.L).label if meta.get("schedule") else path.stem
    return {"schedule": label, "source": f"measured: {path} (N={m.N:,})", "K_min": int(m.K.min()),
            "K_max": int(m.K.max()), "mean_K": round(float(m.K.mean()), 1), "bpp": None,
            "t_star_theory": theory.t_star(m.N, m.K), "t_star_budget": m.t_star_budget(),
            "t_star_threshold": m.t_star_threshold(), "t_star_sustained": m.t_star_sustained()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=theory.parse_count, default=1_280_000)
    ap.add_argument("--dumps", nargs="*", type=Path, default=[])
    ap.add_argument("--out", default="figures/table2.csv")
    args = ap.parse_args()
    df = pd.DataFrame(theory_rows(args.N) + [measured_row(p) for p in args.dumps])
    write_text_atomic(args.out, df.to_csv(index=False))
    print(df.to_string(index=False))
