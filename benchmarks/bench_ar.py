"""Benchmarks for the AR side of vcq: sampling with and without the KV cache, the AR training step,
and the exact memorization metric.

    .venv/bin/python benchmarks/bench_ar.py [--quick] [--device cpu|cuda]

Prints one JSON object per measurement (wall-clock seconds, best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from entropy_cliff.schedules import Schedule
from vcq.ar import ARTransformer, next_token_loss
from vcq.metrics import memorization
from vcq.presets import AR_PRESETS, SamplingConfig, override
from vcq.sampling import sample


def best_of(fn, repeat: int, device: str = "cpu") -> float:
    """Best wall time of ``repeat`` calls; on CUDA the queued kernels are waited for before each
    clock read (kernels run asynchronously, so the clock alone would time the launches)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (CI)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preset", default="tiny", help="AR preset for the model benchmarks")
    args = ap.parse_args()
    torch.manual_seed(0)
    length = 32 if args.quick or args.preset == "tiny" else 256
    kmax = 256 if args.preset == "tiny" else 16384
    K = tuple(int(k) for k in Schedule("cosine", 2, kmax, length).K)
    cfg = override(AR_PRESETS[args.preset].model, K=K, num_classes=10)
    model = ARTransformer(cfg).to(args.device).eval()
    batch = 16 if args.quick else 64
    labels = np.arange(batch) % 10
    guided = SamplingConfig(scale=4.0, schedule="cosine", power=1.5, codebook_aware=True)
    for use_cache in (True, False):
        s = best_of(lambda: sample(model, labels, guided, seed=0, use_cache=use_cache), args.repeat, args.device)
        print(json.dumps({"bench": "sample", "preset": args.preset, "L": length, "K_max": kmax, "batch": batch,
                          "cfg": True, "kv_cache": use_cache, "seconds": round(s, 4),
                          "tokens_per_s": round(batch * length / s, 1), "device": args.device}))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.stack([torch.randint(0, k, (batch,)) for k in K], 1).to(args.device)
    lab = torch.as_tensor(labels).to(args.device)

    def step():
        loss = next_token_loss(model(tokens[:, :-1], lab), tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    s = best_of(step, args.repeat, args.device)
    print(json.dumps({"bench": "train_step", "preset": args.preset, "L": length, "batch": batch,
                      "params_M": round(model.num_parameters() / 1e6, 2), "seconds": round(s, 4),
                      "device": args.device}))
    rng = np.random.default_rng(0)
    n_train = 20_000 if args.quick else 200_000
    K256 = Schedule("cosine", 2, 16384, 256).K
    train = np.stack([rng.integers(0, k, n_train) for k in K256], 1).astype(np.uint16)
    gen = np.concatenate([train[:500], np.stack([rng.integers(0, k, 500) for k in K256], 1)])
    s = best_of(lambda: memorization(gen, train), args.repeat)
    print(json.dumps({"bench": "memorization", "train_rows": n_train, "generated": len(gen), "L": 256,
                      "seconds": round(s, 3)}))


if __name__ == "__main__":
    main()
