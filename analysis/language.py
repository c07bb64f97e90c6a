"""Text beside images at matched N: ``figures/language.json`` (paper Fig. 2a's text curve).

    python analysis/language.py [--text-dir DIR] [--tokenizer tokenizer.json] [--vocab 32000]
                                [--length 256] [--stride 128] [--N N] [--out figures/language.json]

English from the standard library's docstrings (read at run time; or every ``.txt`` under
``--text-dir``), de-duplicated by paragraph, a byte-level BPE tokenizer trained on it with
``--vocab`` entries (``tokenizers``; fewer when the text runs out of merges -- the JSON reports the
real size) or the user's ``--tokenizer``; windows of ``--length`` tokens every ``--stride`` tokens,
N of them drawn at random, N = the replication's training dumps' (``results/replication``) unless
given. ``image`` holds the same record for the constant and cosine replication dumps (unconditional
H_t, to compare with text that has no class), when they exist.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entropy_cliff.io import load_tokens, write_json_atomic  # noqa: E402
from entropy_cliff.language import (entropy_record, load_bpe, stdlib_paragraphs, text_paragraphs,  # noqa: E402
                                    train_bpe, windows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-dir", type=Path, help="a folder of .txt files instead of the stdlib docstrings")
    ap.add_argument("--tokenizer", type=Path, help="a tokenizer.json instead of training BPE")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--N", type=int, help="windows (default: rows of the replication's training dumps, else 2000)")
    ap.add_argument("--dumps", type=Path, default=ROOT / "results" / "replication")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "figures" / "language.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    image = {k: args.dumps / k / "train" / "tokens.npy" for k in ("constant", "cosine")}
    image = {k: p for k, p in image.items() if p.is_file()}
    N = args.N or (len(load_tokens(next(iter(image.values())))) if image else 2000)
    paras = text_paragraphs(args.text_dir) if args.text_dir else stdlib_paragraphs()
    tok = load_bpe(args.tokenizer) if args.tokenizer else train_bpe(paras, args.vocab)
    X = windows(paras, tok, args.length, args.stride, N, args.seed)
    rec = entropy_record(X, tok.get_vocab_size())
    rec.update(source={"text": str(args.text_dir) if args.text_dir else "python standard library docstrings",
                       "python": sys.version.split()[0], "paragraphs": len(paras),
                       "characters": sum(map(len, paras)), "tokenizer": str(args.tokenizer or "byte-level BPE trained here"),
                       "vocab_requested": args.vocab, "stride": args.stride, "seed": args.seed},
               image={k: entropy_record(p) for k, p in image.items()})
    write_json_atomic(args.out, rec)
    print(f"text: N = {rec['N']}, L = {rec['L']}, vocab = {rec['vocab']}, t*_sustained = {rec['t_star_sustained']}; "
          + "; ".join(f"{k}: t*_sustained = {v['t_star_sustained']}" for k, v in rec["image"].items())
          + f"; wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
