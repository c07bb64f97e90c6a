"""CPU mini-replication of the paper's Table 4 / Table 8 / §4.4 on real image crops, resumable.

    python analysis/replicate.py --stage train    [--work runs/replication] [--jobs 2]
    python analysis/replicate.py --stage eval     [--work runs/replication] [--jobs 2]
    python analysis/replicate.py --stage collect  [--work runs/replication]
    python analysis/replicate.py --stage all      (the three in order; what `make replicate` runs)

Data: 32×32 random crops of the natural images bundled with scikit-image (``vcq`` data ``patches``;
the class of a crop is its source image, 15 classes).

``train``: five tokenizers with one budget (``TOKENIZERS``: constant K_max, constant K_max/2, VCQ
linear, cosine, power 2.5; same preset, width, steps, data), each dumps ``N`` training crops and
``N_VAL`` held-out crops (other crop seeds) to ``results/replication/TOK/{train,val}/tokens.npy``,
then one AR configuration is trained on every training dump (``AR_RUNS``: regularized = the paper's
three 0.1 dropouts + weight decay, Appendix A; unregularized = no AR/token dropout, no weight decay,
label dropout kept for CFG; two seeds for constant and cosine). Per-position NLL goes to
``results/replication/ar/RUN/nll.json``.

``eval``: per AR run, samples without CFG, with pow-cosine CFG and with CodebookSize-Aware CFG
(``vcq sample``), each scored by ``vcq evaluate`` (dFID, precision/recall, probes, memorization,
reconstruction PSNR); per tokenizer, JPEG (Pillow) at the tokenizer's bits per pixel
(:func:`vcq.jpeg_anchor.jpeg_at_bpp`). ``collect``: ``figures/replication.json``
(:func:`entropy_cliff.replication.collect`).

Every job leaves a marker in ``WORK/done/`` when it finishes and is skipped on a re-run; an
interrupted training job continues from its checkpoint (``--resume``). Jobs run ``--jobs`` at a
time, one torch thread each, in dependency order. Checkpoints live under ``--work`` (ignored by git),
small results under ``--results`` (committed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entropy_cliff.jobs import Job, run_jobs  # noqa: E402

KMAX, LENGTH = 1024, 32
TOKENIZERS: dict[str, dict] = {
    "constant": {"schedule": "constant", "kmin": KMAX, "kmax": KMAX, "power": 1.0},
    "cosine": {"schedule": "cosine", "kmin": 2, "kmax": KMAX, "power": 1.0},
    "linear": {"schedule": "linear", "kmin": 2, "kmax": KMAX, "power": 1.0},
    "power": {"schedule": "power", "kmin": 2, "kmax": KMAX, "power": 2.5},
    "constant_half": {"schedule": "constant", "kmin": KMAX // 2, "kmax": KMAX // 2, "power": 1.0},
}
# one tokenizer budget for all five (the demo corpus's recipe, analysis/make_demo_corpus.py)
TOK_ARGS = ["--preset", "tiny", "--data", "patches", "--n", "20000", "--num-latent", str(LENGTH),
            "--steps", "1500", "--batch-size", "32", "--enc-width", "64", "--dec-width", "64",
            "--l2-norm-codes", "--dead-code-restart", "--ckpt-every", "250", "--log-every", "50",
            "--preview-every", "100000"]
N, N_VAL = 2000, 500                     # AR training rows / held-out rows per dump
TRAIN_SEED, VAL_SEED = 1001, 2002        # crop seeds of the two dumps (tokenizers train on seed 0)
AR_STEPS, AR_BATCH = 2000, 64
AR_ARGS = ["--preset", "tiny", "--batch-size", str(AR_BATCH), "--ckpt-every", "250", "--log-every", "100"]
UNREGULARIZED = ["--dropout", "0", "--token-dropout", "0", "--weight-decay", "0"]


@dataclass(frozen=True)
class ARRun:
    tok: str
    regularized: bool
    seed: int

    @property
    def name(self) -> str:
        return f"{self.tok}_{'reg' if self.regularized else 'noreg'}_s{self.seed}"


AR_RUNS = ([ARRun("constant", True, 0), ARRun("cosine", True, 0), ARRun("constant", False, 0),
            ARRun("cosine", False, 0)] + [ARRun(t, True, 0) for t in ("linear", "power", "constant_half")]
           + [ARRun("constant", True, 1), ARRun("cosine", True, 1)])
# sampling: T = 1 without guidance; the pow-cosine ramp of the paper (scale 4, p 1.5) without and
# with the CodebookSize-Aware gating (Eq. 4)
N_SAMPLES = 1000  # dFID needs >= 1000 samples (and >= 10 x the 64-d classifier features) to mean anything
N_CLASSES = 15  # source images of the patches data
SAMPLINGS = {
    "nocfg": ["--schedule", "none", "--temperature", "1.0"],
    "cfg": ["--scale", "4", "--schedule", "cosine", "--power", "1.5", "--no-codebook-aware"],
    "cfg_aware": ["--scale", "4", "--schedule", "cosine", "--power", "1.5", "--codebook-aware"],
}


class Layout:
    """Where everything goes: checkpoints under ``work``, committed results under ``results``."""

    def __init__(self, work: Path, results: Path) -> None:
        self.work, self.results = work, results

    def tok(self, t: str) -> Path:
        return self.work / "tok" / t

    def dump(self, t: str, split: str) -> Path:
        return self.results / t / split / "tokens.npy"

    def ar(self, r: ARRun) -> Path:
        return self.work / "ar" / r.name

    def ar_results(self, r: ARRun) -> Path:
        return self.results / "ar" / r.name

    def done(self, job: str) -> Path:
        """A finished job's marker: under ``work`` with the checkpoints it vouches for (never committed),
        so a fresh clone reruns every job."""
        return self.work / "done" / job.replace(":", "_")


def vcq(*args: object) -> list[str]:
    return [sys.executable, "-m", "vcq.cli", *map(str, args)]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")


def train_jobs(lay: Layout) -> list[Job]:
    jobs: list[Job] = []
    for t, s in TOKENIZERS.items():
        out = lay.tok(t)

        def train_tok(out: Path = out, s: dict = s) -> None:
            if (out / "train_state.pt").exists():
                run(vcq("train-tokenizer", "--out", out, "--resume", "--threads", 1, "--quiet"))
            else:
                run(vcq("train-tokenizer", *TOK_ARGS, "--schedule", s["schedule"], "--kmin", s["kmin"],
                        "--kmax", s["kmax"], "--power", s["power"], "--threads", 1, "--out", out, "--quiet"))

        jobs.append(Job(f"tok:{t}", train_tok, lay.done(f"tok:{t}")))

        def dumps(t: str = t) -> None:
            for split, n, seed in (("train", N, TRAIN_SEED), ("val", N_VAL, VAL_SEED)):
                run(vcq("dump-tokens", "--ckpt", lay.tok(t), "--data", "patches", "--n", n, "--data-seed", seed,
                        "--split", "all", "--threads", 1, "--out", lay.dump(t, split), "--quiet"))

        jobs.append(Job(f"dump:{t}", dumps, lay.done(f"dump:{t}"), [f"tok:{t}"]))
    for r in AR_RUNS:
        def train_ar(r: ARRun = r) -> None:
            out, res = lay.ar(r), lay.ar_results(r)
            tr, va = lay.dump(r.tok, "train"), lay.dump(r.tok, "val")
            resume = ["--resume"] if (out / "train_state.pt").exists() else []  # a killed run continues
            run(vcq("train-ar", "--tokens", tr, "--val-tokens", va,  # each dump's NAME.labels.npy is found
                    *AR_ARGS, "--steps", AR_STEPS, "--seed", r.seed,
                    *([] if r.regularized else UNREGULARIZED), *resume, "--out", out, "--format", "json", "--quiet"))
            res.mkdir(parents=True, exist_ok=True)
            for f in ("nll.json", "config.json", "metrics.jsonl"):
                shutil.copy2(out / f, res / f)

        jobs.append(Job(f"ar:{r.name}", train_ar, lay.done(f"ar:{r.name}"), [f"dump:{r.tok}"]))
    return jobs


def eval_jobs(lay: Layout) -> list[Job]:
    jobs: list[Job] = []
    for t in TOKENIZERS:
        def jpeg(t: str = t) -> None:
            from entropy_cliff.io import read_sidecar, write_json_atomic
            from vcq.jpeg_anchor import jpeg_at_bpp, tokenizer_val_crops

            K = read_sidecar(lay.dump(t, "train"))["K"]
            images = tokenizer_val_crops(lay.tok(t), N_SAMPLES, 0)  # the images of the recon job (--n-recon, --seed 0)
            write_json_atomic(lay.results / t / "jpeg.json", jpeg_at_bpp(images, K))

        jobs.append(Job(f"jpeg:{t}", jpeg, lay.done(f"jpeg:{t}")))

        def recon(t: str = t) -> None:  # reconstruction metrics; the first one also trains the shared dFID classifier
            run(vcq("evaluate", "--tokenizer", lay.tok(t), "--cache-dir", lay.work / "dfid-cache", "--seed", 0,
                    "--n-recon", N_SAMPLES,
                    "--out", lay.results / t / "recon.json", "--format", "json", "--quiet"))

        first = next(iter(TOKENIZERS))
        jobs.append(Job(f"recon:{t}", recon, lay.done(f"recon:{t}"), [] if t == first else [f"recon:{first}"]))
    for r in AR_RUNS:
        if not lay.done(f"ar:{r.name}").exists():  # still training: evaluated by a later run of this stage
            continue
        for setting, flags in SAMPLINGS.items():
            def sample_eval(r: ARRun = r, setting: str = setting, flags: list[str] = flags) -> None:
                d, g = lay.ar(r) / f"samples_{setting}", lay.ar(r) / f"grid_{setting}"
                if not (d / "tokens.npy").exists():
                    run(vcq("sample", "--ckpt", lay.ar(r), "--n", N_SAMPLES, *flags, "--seed", 1, "--out", d, "--quiet"))
                if not (g / "grid.png").exists():  # 3 samples per class, one column per class, decoded
                    run(vcq("sample", "--ckpt", lay.ar(r), "--tokenizer", lay.tok(r.tok), "--n", 3 * N_CLASSES,
                            "--cols", N_CLASSES, *flags, "--seed", 2, "--out", g, "--quiet"))
                lay.ar_results(r).mkdir(parents=True, exist_ok=True)
                shutil.copy2(g / "grid.png", lay.ar_results(r) / f"grid_{setting}.png")
                ev = lay.ar_results(r) / f"eval_{setting}.json"
                run(vcq("evaluate", "--samples", d, "--ckpt", lay.ar(r), "--tokenizer", lay.tok(r.tok),
                        "--cache-dir", lay.work / "dfid-cache", "--probe-k", "1,3,all", "--seed", 0, "--n-recon", N_SAMPLES,
                        "--out", ev, "--format", "json", "--quiet"))

            jobs.append(Job(f"eval:{r.name}:{setting}", sample_eval, lay.done(f"eval:{r.name}:{setting}"),
                            [f"recon:{next(iter(TOKENIZERS))}"]))
    return jobs


def make_quick() -> None:
    """Shrink every budget so that the whole pipeline runs in a few minutes (a smoke test)."""
    global N, N_VAL, AR_STEPS, N_SAMPLES
    N, N_VAL, AR_STEPS, N_SAMPLES = 300, 60, 30, 30
    TOK_ARGS[TOK_ARGS.index("--steps") + 1] = "20"
    TOK_ARGS[TOK_ARGS.index("--n") + 1] = "600"
    del AR_RUNS[2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("train", "eval", "collect", "all"), required=True)
    ap.add_argument("--work", type=Path, help="checkpoints and job markers, not committed (default runs/replication)")
    ap.add_argument("--results", type=Path, help="committed results (default results/replication)")
    ap.add_argument("--out", type=Path, help="the summary (default figures/replication.json)")
    ap.add_argument("--jobs", type=int, default=2, help="processes side by side (one torch thread each)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: a few steps and rows per job, everything under runs/quick (never the committed results)")
    args = ap.parse_args()
    base = ROOT / "runs" / "quick" if args.quick else None
    args.work = args.work or (base or ROOT / "runs") / "replication"
    args.results = args.results or (base / "results" if base else ROOT / "results" / "replication")
    args.out = args.out or (base / "replication.json" if base else ROOT / "figures" / "replication.json")
    if args.quick:
        make_quick()
    lay = Layout(args.work.resolve(), args.results.resolve())
    lay.work.mkdir(parents=True, exist_ok=True)
    logfile = lay.work / "log.txt"
    failures = 0
    if args.stage in ("train", "all"):
        failures += run_jobs(train_jobs(lay), args.jobs, logfile)
    if args.stage in ("eval", "all") and not failures:
        failures += run_jobs(eval_jobs(lay), args.jobs, logfile)
    if args.stage in ("collect", "all") and not failures:
        from entropy_cliff.io import write_json_atomic
        from entropy_cliff.replication import collect

        settings = {"data": "32x32 crops of the scikit-image natural images (class = source image)",
                    "N": N, "N_val": N_VAL, "L": LENGTH, "tokenizer_args": " ".join(TOK_ARGS),
                    "ar_args": " ".join(AR_ARGS), "ar_steps": AR_STEPS, "unregularized": " ".join(UNREGULARIZED),
                    "samples": N_SAMPLES, "sampling": {k: " ".join(v) for k, v in SAMPLINGS.items()},
                    "memorization and precision/recall": "memorization: samples without CFG; precision/recall: "
                                                         "CodebookSize-Aware CFG samples"}
        runs = [{"name": r.name, "tok": r.tok, "regularized": r.regularized, "seed": r.seed} for r in AR_RUNS]
        write_json_atomic(args.out, collect(lay.results, runs, TOKENIZERS, settings))
        print(f"wrote {args.out}")
    if failures:
        sys.exit(f"{failures} job(s) failed; see {logfile}; re-run to retry them")


if __name__ == "__main__":
    main()
