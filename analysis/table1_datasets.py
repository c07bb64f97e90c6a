"""Paper Table 1: t* of standard datasets for a uniform codebook, and the data thresholds.

    python analysis/table1_datasets.py [--K 16384] [--out figures/table1.csv]
"""

import argparse
import math

import pandas as pd

from entropy_cliff import theory
from entropy_cliff.io import write_text_atomic


def table1(K: int) -> pd.DataFrame:
    rows = [{"dataset": d.name, "type": d.kind, "N": d.N, "log2_N": round(math.log2(d.N), 1),
             "t_star": theory.t_star(d.N, K)} for d in theory.DATASETS]
    imagenet = next(d.N for d in theory.DATASETS if d.name == "ImageNet-1K")
    rows += [{"dataset": f"threshold t*={th.t_star}", "type": "hypothetical", "N": th.N_min,
              "log2_N": th.log2_N_min, "t_star": th.t_star, "x_ImageNet": th.times_N}
             for th in theory.thresholds(imagenet, K, upto=5)]
    return pd.DataFrame(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", type=int, default=16384)
    ap.add_argument("--out", default="figures/table1.csv")
    args = ap.parse_args()
    df = table1(args.K)
    write_text_atomic(args.out, df.to_csv(index=False))
    print(df.to_string(index=False))
