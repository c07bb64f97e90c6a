"""Summaries of the CPU mini-replication (``analysis/replicate.py``): ``figures/replication.json``.

Per AR run the results folder holds ``nll.json`` (per-position NLL in bits on training and held-out
rows, and the training rows' class-conditional entropy H(X_t | X_<t, c)), ``config.json`` and one
``eval_SETTING.json`` per sampling setting (``vcq evaluate``); per tokenizer, ``jpeg.json``
(:func:`vcq.jpeg_anchor.jpeg_at_bpp`), ``recon.json`` (``vcq evaluate --tokenizer``) and the token dumps.

The memorization regime (:func:`regime`): averaged over positions t > t*_sustained of the data,
train NLL < 0.5 bit/token while held-out NLL > 1 bit/token -- the model reproduces its training
sequences past the cliff but cannot predict unseen ones there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import read_json
from entropy_cliff.theory import t_star, t_star_sustained

SETTINGS = ("nocfg", "cfg", "cfg_aware")


def regime(nll_train: Sequence[float], nll_val: Sequence[float], t_star_measured: int | None,
           train_below: float = 0.5, val_above: float = 1.0) -> dict[str, Any]:
    """Mean train / held-out NLL over positions t >= t*_sustained and whether the model memorizes there.

    ``reached``: mean train NLL < ``train_below`` and mean held-out NLL > ``val_above`` (bits/token).
    """
    tr, va = np.asarray(nll_train, dtype=np.float64), np.asarray(nll_val, dtype=np.float64)
    if tr.shape != va.shape or tr.ndim != 1:
        raise EntropyCliffError(f"nll_train and nll_val must be two lists of one length, got {tr.shape} and {va.shape}")
    if t_star_measured is None or t_star_measured > tr.size:
        return {"from_t": t_star_measured, "train_after": None, "val_after": None, "reached": False}
    s = slice(t_star_measured - 1, None)
    a, b = float(tr[s].mean()), float(va[s].mean())
    return {"from_t": t_star_measured, "train_after": a, "val_after": b, "reached": bool(a < train_below and b > val_above)}


def _probe(ev: dict | None, k: int) -> float | None:
    if not ev or "linear_probe" not in ev:
        return None
    rows = {r["tokens"]: r for r in ev["linear_probe"]["table"]}
    return float(rows[k]["top1"]) if k in rows else None


def _fid(ev: dict | None) -> float | None:
    g = (ev or {}).get("generation")
    if not g:
        return None
    return float(g.get("dFID", g.get("FID")))


def run_record(res: Path, run: dict[str, Any], tok: dict[str, Any], jpeg: dict | None,
               recon: dict | None = None) -> dict[str, Any]:
    """One entry of ``runs`` in ``figures/replication.json`` from a run's results folder (``jpeg``,
    ``recon``: the tokenizer's ``jpeg.json`` and ``recon.json``)."""
    nll = read_json(res / "nll.json")
    if nll is None:
        raise EntropyCliffError(f"{res}: no nll.json (the run has not finished training)")
    cfg = read_json(res / "config.json") or {}
    ev = {s: read_json(res / f"eval_{s}.json") for s in SETTINGS}
    H = nll["data_H_cond_bits"]
    L = len(H)
    K = [int(k) for k in cfg.get("model", {}).get("K", [])] or None
    N = int(nll["train_rows"])
    ts_meas = t_star_sustained(H)
    main = ev["cfg_aware"] or ev["cfg"] or ev["nocfg"]
    mem = (ev["nocfg"] or {}).get("memorization", {})
    any_ev = next((e for e in ev.values() if e), None)
    return {
        "name": run["name"], "tokenizer": run["tok"],
        "schedule": tok["schedule"], "kmin": int(tok["kmin"]), "kmax": int(tok["kmax"]),
        "power": float(tok["power"]) if tok["schedule"] == "power" else None,
        "regularized": bool(run["regularized"]), "steps": int(nll.get("step", cfg.get("train", {}).get("steps", 0))),
        "seed": int(run["seed"]), "N": N,
        "t_star_theory": t_star(N, K) if K else None, "t_star_sustained": ts_meas,
        "psnr": (recon or any_ev or {}).get("reconstruction", {}).get("psnr"),
        "psnr_jpeg": jpeg["psnr"] if jpeg else None, "jpeg": jpeg,
        "dfid_nocfg": _fid(ev["nocfg"]), "dfid_cfg": _fid(ev["cfg"]), "dfid_cfg_aware": _fid(ev["cfg_aware"]),
        "dfid_heldout_real": ((main or {}).get("generation") or {}).get("reference_heldout_real", {}).get("dFID"),
        "precision": ((main or {}).get("generation") or {}).get("precision"),
        "recall": ((main or {}).get("generation") or {}).get("recall"),
        "memorization": (mem.get("generated") or {}).get("exact_copy"),
        "memorization_mean_prefix": (mem.get("generated") or {}).get("mean_prefix"),
        "memorization_heldout_real": (mem.get("heldout_real") or {}).get("exact_copy"),
        "memorization_prefix_share": (mem.get("generated") or {}).get("prefix_share"),
        "probe_first10": _probe(any_ev, max(1, int(0.1 * L))), "probe_all": _probe(any_ev, L),
        "H_cond": [float(h) for h in H], "nll_train": [float(x) for x in nll["train_nll_bits"]],
        "nll_val": [float(x) for x in nll["val_nll_bits"]],
        "regime": regime(nll["train_nll_bits"], nll["val_nll_bits"], ts_meas),
    }


def collect(results: str | Path, runs: Sequence[dict[str, Any]], tokenizers: dict[str, dict[str, Any]],
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"settings", "runs": [run_record, ...]}`` for every run whose training finished (others are listed
    under ``"missing"``). ``runs``: ``{"name", "tok", "regularized", "seed"}``; ``tokenizers``: name ->
    ``{"schedule", "kmin", "kmax", "power"}``."""
    results = Path(results)
    out: dict[str, Any] = {"settings": settings or {}, "runs": [], "missing": []}
    for r in runs:
        res = results / "ar" / r["name"]
        if not (res / "nll.json").is_file():
            out["missing"].append(r["name"])
            continue
        tok_dir = results / r["tok"]
        out["runs"].append(run_record(res, r, tokenizers[r["tok"]], read_json(tok_dir / "jpeg.json"), read_json(tok_dir / "recon.json")))
    return out
