"""Paper Fig. 2a: per-position conditional entropy and remaining budget of several token dumps.

    python analysis/fig2a_entropy_cliff.py constant.npy cosine.npy [--out figures/fig2a.png]

Without arguments it uses the embedded demo dumps. Same as `entropy-cliff compare ... --out`.
"""

import sys

from entropy_cliff.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(not a.startswith("-") for a in args):
        args = ["--demo", *args]
    if "--out" not in args:
        args += ["--out", "figures/fig2a.png"]
    main(["compare", *args])
