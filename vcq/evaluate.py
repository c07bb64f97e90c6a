"""Evaluation of runs: which metric is computed on which images and tokens (the formulas live in
:mod:`vcq.metrics`, the networks that give features in :mod:`vcq.features`).

:func:`evaluate_run` returns one JSON-ready dict; ``feature_extractor`` names the network behind
every FID-like number, ``metrics_backend`` what computed them (torch-fidelity's
``calculate_metrics`` on its Inception wherever torch-fidelity imports, else our formulas of
:mod:`vcq.metrics`), and ``warnings`` lists what makes a number unreliable (e.g. a dFID from too
few samples). ``vcq evaluate`` prints it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from vcq.features import (ClassifierSpec, DatasetClassifier, FeatureExtractor, TorchFidelityInception,
                          inception_extractor, small_sample_warning)
from vcq.fidelity import BACKEND as FIDELITY, fidelity_metrics
from vcq.metrics import IS_SPLITS, fid, inception_score, mean_psnr, memorization, precision_recall, probe_table

OURS = "entropy-cliff vcq.metrics"


def metrics_backend(extractor: FeatureExtractor) -> str:
    """Who computes FID / IS / precision-recall: torch-fidelity's ``calculate_metrics`` on its own
    Inception (:mod:`vcq.fidelity`), else our formulas (:mod:`vcq.metrics`) on the extractor's
    features."""
    return FIDELITY if isinstance(extractor, TorchFidelityInception) else OURS


def reconstruction_images(dataset, n: int, seed: int) -> np.ndarray:
    """The images whose reconstruction :func:`evaluate_run` measures (and the JPEG anchor compresses):
    rows ``sort(permutation_seed(len(dataset))[:n])`` of ``dataset`` (a :class:`vcq.data.ImageSet`),
    drawn with ``numpy.random.default_rng(seed)``; all of them when ``n >= len(dataset)``."""
    return dataset.images(np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n]))


def reconstruction_metrics(tokenizer, images: np.ndarray, extractor: FeatureExtractor | None = None) -> dict[str, float]:
    """PSNR (:func:`vcq.metrics.mean_psnr`) of encode -> decode, and rFID (or rdFID) when an
    extractor is given."""
    from vcq.tokenizer import reconstruct

    recon = reconstruct(tokenizer, images)
    out = {"psnr": mean_psnr(images, recon), "images": int(len(images))}
    if extractor is not None and metrics_backend(extractor) == FIDELITY:
        out["r" + extractor.fid_name] = fidelity_metrics(images, recon, extractor.path, device=extractor.device)["FID"]
    elif extractor is not None:
        out["r" + extractor.fid_name] = fid(extractor(images)[0], extractor(recon)[0])
    return out


def generation_metrics(extractor: FeatureExtractor, real_images: np.ndarray, fake_images: np.ndarray,
                       k: int = 3) -> dict[str, float]:
    """FID (or dFID), precision/recall (k-NN, k = 3) and IS (or dIS; mean and standard deviation
    over 10 splits, one split below 10 images) of ``fake`` against ``real``, computed by
    :func:`metrics_backend`."""
    splits = IS_SPLITS if len(fake_images) >= IS_SPLITS else 1
    if metrics_backend(extractor) == FIDELITY:
        m = fidelity_metrics(real_images, fake_images, extractor.path, isc=True, prc=True, isc_splits=splits, k=k,
                             device=extractor.device)
        return {"FID": m["FID"], "precision": m["precision"], "recall": m["recall"], "IS": m["IS"],
                "IS_std": m["IS_std"], "is_splits": splits}
    real_f, _ = extractor(real_images)
    fake_f, fake_p = extractor(fake_images)
    precision, recall = precision_recall(real_f, fake_f, k)
    out = {extractor.fid_name: fid(real_f, fake_f), "precision": precision, "recall": recall}
    if fake_p is not None:
        out[extractor.is_name], out[extractor.is_name + "_std"] = inception_score(fake_p, splits)
        out["is_splits"] = splits
    return out


def load_samples(samples_dir: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``tokens.npy`` (+ sidecar K_t) and its labels written by ``vcq sample``."""
    from vcq.train_ar import load_token_dump

    d = load_token_dump(Path(samples_dir) / "tokens.npy")
    return np.asarray(d.tokens), d.labels, d.K


def evaluate_run(samples_dir: str | Path | None, ar_dir: str | Path | None, tokenizer_dir: str | Path | None, *,
                 inception_path: str | Path | None = None, cache_dir: str | Path = "runs/dfid-cache",
                 n_real: int = 2000, n_recon: int = 500, probe_firsts: tuple[int, ...] = (1, 10, 0),
                 seed: int = 0, progress: bool = False, device: str | None = None) -> dict:
    """Every metric the given inputs allow, as one JSON-ready dict.

    - tokenizer: reconstruction PSNR and rFID/rdFID on the dataset's validation split;
    - samples + tokenizer: FID/dFID, precision/recall (k = 3), IS/dIS of the decoded samples against
      ``n_real`` training images, with the same metrics between ``len(samples)`` validation images
      and the training images as the finite-sample reference;
    - AR run: per-position NLL from its ``nll.json``, a linear probe (Table 6 form; code vectors
      when a tokenizer is given, one-hot tokens otherwise; k = 0 means all L tokens) on its training
      dump, and with samples, memorization against the rows the AR was trained on, next to the same
      statistic for its held-out rows (real sequences it never saw).

    FID-like numbers use the Inception network (:func:`vcq.features.inception_extractor`) when
    ``inception_path`` is given, else a dataset classifier (dFID) cached in ``cache_dir``.
    Decoding, reconstruction and featurizing run in batches on ``device`` (default: CUDA when
    present, else the CPU); the output records it as ``"device"``.
    """
    from vcq.train import resolve_device

    from vcq.runs import load_run
    from vcq.train_ar import check_dump_matches

    if not (samples_dir or ar_dir or tokenizer_dir):
        raise EntropyCliffError("nothing to evaluate: give samples, an AR run and/or a tokenizer run")
    if any(int(k) < 0 for k in probe_firsts):
        raise EntropyCliffError(f"probe_firsts must be >= 1 (0 = all tokens), got {list(probe_firsts)}")
    dev = resolve_device(device)
    out: dict = {"warnings": [], "device": str(dev)}
    samples = load_samples(samples_dir) if samples_dir is not None else None
    tok = ds = None
    if tokenizer_dir is not None:
        run = load_run(tokenizer_dir, dev, task="tokenizer")
        tok, tcfg = run.model, run.model.cfg
        ds = {s: run.data.load(s, tcfg, augment=False) for s in ("train", "val")}
        tok_K = tuple(int(k) for k in tok.quantizer.K.tolist())
        if samples is not None and samples[2] != tok_K:
            raise EntropyCliffError(f"{samples_dir}: sample K_t disagree with the tokenizer's")
    extractor: FeatureExtractor | None = None
    if ds is not None:
        if inception_path is not None:
            extractor = inception_extractor(inception_path, dev)
            out["features"] = {"path": str(inception_path)}
        else:
            tr_imgs, va_imgs = ds["train"].images(np.arange(len(ds["train"]))), ds["val"].images(np.arange(len(ds["val"])))
            cspec = ClassifierSpec(dataset={**run.config["data"], "image_size": tcfg.image_size},
                                   channels=tcfg.channels, num_classes=len(ds["train"].class_names), seed=seed)
            extractor = DatasetClassifier.load_or_train(cspec, tr_imgs, ds["train"].label_array(), va_imgs,
                                                        ds["val"].label_array(), cache_dir, progress, dev)
            out["features"] = dict(extractor.info)
        out["feature_extractor"], out["metrics_backend"] = extractor.name, metrics_backend(extractor)
        val = reconstruction_images(ds["val"], n_recon, seed)
        out["reconstruction"] = reconstruction_metrics(tok, val, extractor)
        warn = small_sample_warning(extractor, len(val))
        if warn:
            out["warnings"].append("reconstruction: r" + warn)
    if samples is not None and tok is not None:
        from vcq.tokenizer import decode_tokens

        rng = np.random.default_rng(seed + 1)
        real = ds["train"].images(np.sort(rng.permutation(len(ds["train"]))[:n_real]))
        fake = decode_tokens(tok, samples[0])
        ref = ds["val"].images(np.sort(rng.permutation(len(ds["val"]))[:len(fake)]))
        out["generation"] = {"samples": int(len(fake)), "real_images": int(len(real)),
                             **generation_metrics(extractor, real, fake),
                             "reference_heldout_real": generation_metrics(extractor, real, ref)}
        warn = small_sample_warning(extractor, len(fake))
        if warn:
            out["warnings"].append("generation: " + warn)
    if ar_dir is not None:
        run = load_run(ar_dir, task="ar")
        model_cfg = run.model.cfg
        nll_path = Path(ar_dir) / "nll.json"
        if nll_path.is_file():
            out["nll"] = json.loads(nll_path.read_text())
        dump, train_rows, held = run.data.load(int(run.config["train"]["seed"]))
        check_dump_matches(dump, model_cfg)
        tokens = np.asarray(dump.tokens)
        codebook = tok.quantizer.codes().detach().cpu().numpy() if tok is not None else None
        firsts = [f if f > 0 else tokens.shape[1] for f in probe_firsts]
        out["linear_probe"] = {"features": "code vectors" if codebook is not None else "one-hot tokens",
                               "rows": int(len(tokens)),
                               "table": probe_table(tokens, dump.labels, dump.K, firsts, codebook, seed=seed)}
        if samples is not None:
            if samples[2] != model_cfg.K:
                raise EntropyCliffError(f"{samples_dir}: sample K_t disagree with the AR model's")
            out["memorization"] = {"generated": memorization(samples[0], train_rows.tokens),
                                   "training_rows": int(len(train_rows))}
            if len(held):
                out["memorization"]["heldout_real"] = memorization(held.tokens, train_rows.tokens)
    return out
