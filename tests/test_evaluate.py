"""vcq.metrics against closed forms and brute-force references; vcq.features and vcq.evaluate."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from entropy_cliff.errors import EntropyCliffError
from vcq.evaluate import generation_metrics
from vcq.features import CLASSIFIER, PORT, ClassifierSpec, DatasetClassifier, PortInception, small_sample_warning
from vcq.metrics import (fid, frechet_distance, inception_score, linear_probe, longest_training_prefix, mean_psnr,
                         memorization, precision_recall, psnr, token_features)


def test_psnr_of_a_known_error():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 1  # MSE 1
    b[1, 0, 0, 0] = 48  # MSE 48^2 / 48 = 48
    np.testing.assert_allclose(psnr(a, b), [20 * math.log10(255), 10 * math.log10(255**2 / 48)])
    assert psnr(a, a)[0] == np.inf
    # the one definition: images in [0, 1], PSNR per image, then the mean over images
    x01, y01 = a / 255.0, b / 255.0
    per_image = [10 * math.log10(1 / np.mean((x01[i] - y01[i]) ** 2)) for i in range(2)]
    assert mean_psnr(a, b) == pytest.approx(np.mean(per_image))
    assert mean_psnr(x01, y01, data_range=1.0) == pytest.approx(np.mean(per_image))


def test_inception_score_uses_ten_equal_splits():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5) * 0.3, size=100)
    scores = []
    for part in np.split(p, 10):
        m = part.mean(0)
        scores.append(math.exp(np.mean([np.sum(q * np.log(q / m)) for q in part])))
    mean, std = inception_score(p)
    assert mean == pytest.approx(np.mean(scores)) and std == pytest.approx(np.std(scores))
    with pytest.raises(EntropyCliffError, match="10 splits"):
        inception_score(p[:9])


def test_fid_of_a_set_against_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert fid(f, f) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    va, vb = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert frechet_distance(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(expected, rel=1e-9)


def test_fid_from_samples_approaches_the_population_value():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, size=(20000, 3))
    b = rng.normal(1, 2, size=(20000, 3))
    assert fid(a, b) == pytest.approx(3 * (1 + 1), rel=0.03)  # 3 * (dmu^2 + (1 - 2)^2)


def brute_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    rr, fr = radii(real), radii(fake)
    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    precision = np.mean([(d[j] <= rr).any() for j in range(len(fake))])
    recall = np.mean([(d[:, i] <= fr).any() for i in range(len(real))])
    return precision, recall


@pytest.mark.parametrize("shift", [0.0, 1.0, 3.0])
def test_precision_recall_matches_brute_force(shift):
    rng = np.random.default_rng(int(shift * 10))
    real = rng.normal(size=(60, 4))
    fake = rng.normal(size=(50, 4)) * 0.5 + shift
    assert precision_recall(real, fake, 3) == pytest.approx(brute_precision_recall(real, fake, 3))


def test_precision_recall_end_points():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(100, 3))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    with pytest.raises(EntropyCliffError, match="more than 3"):
        precision_recall(real[:3], real)


def test_inception_score_end_points():
    one_hot = np.eye(10)[np.arange(1000) % 10]
    assert inception_score(one_hot)[0] == pytest.approx(10.0)
    assert inception_score(np.full((50, 10), 0.1))[0] == pytest.approx(1.0)
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)


def test_token_features_one_hot_blocks_and_codebook_vectors():
    tokens = np.array([[1, 0, 4], [0, 2, 3]])
    K = [2, 3, 5]
    oh = token_features(tokens, K, 3).toarray()
    assert oh.shape == (2, 10)
    assert np.flatnonzero(oh[0]).tolist() == [1, 2, 5 + 4] and np.flatnonzero(oh[1]).tolist() == [0, 4, 8]
    assert token_features(tokens, K, 1).shape == (2, 2)
    codebook = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(token_features(tokens, K, 2, codebook), [[2, 3, 0, 1], [0, 1, 4, 5]])


def test_linear_probe_reads_the_label_from_the_right_position():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 8, n)
    tokens = np.column_stack([y, rng.integers(0, 8, (n, 3))])  # position 1 is the label, the rest noise
    K = [8, 8, 8, 8]
    tr, te = slice(0, 400), slice(400, n)
    first = linear_probe(token_features(tokens[tr], K, 1), y[tr], token_features(tokens[te], K, 1), y[te])
    assert first == {"top1": 1.0, "top5": 1.0, "converged": True}
    noise = linear_probe(token_features(tokens[tr, 1:], K[1:], 3), y[tr], token_features(tokens[te, 1:], K[1:], 3), y[te])
    assert noise["top1"] < 0.3  # chance is 1/8
    assert 0.45 < noise["top5"] < 0.85  # chance is 5/8


def test_memorization_on_a_constructed_case():
    train = np.array([[1, 2, 3, 4], [1, 2, 5, 6], [7, 7, 7, 7], [0, 0, 0, 1]])
    gen = np.array([[1, 2, 3, 4],   # exact copy: m = 4
                    [1, 2, 5, 0],   # m = 3
                    [1, 9, 9, 9],   # m = 1
                    [2, 0, 0, 0],   # m = 0
                    [0, 0, 0, 0]])  # m = 3
    assert longest_training_prefix(gen, train).tolist() == [4, 3, 1, 0, 3]
    m = memorization(gen, train)
    assert m["prefix_share"] == [4 / 5, 3 / 5, 3 / 5, 1 / 5]
    assert m["exact_copy"] == 1 / 5
    assert m["mean_prefix"] == pytest.approx(11 / 5)


@settings(max_examples=40, deadline=None)
@given(train=arrays(np.uint8, st.tuples(st.integers(1, 40), st.just(5)), elements=st.integers(0, 2)),
       gen=arrays(np.uint8, st.tuples(st.integers(1, 30), st.just(5)), elements=st.integers(0, 2)))
def test_longest_training_prefix_matches_brute_force(train, gen):
    expected = [max(next((i for i in range(5) if g[i] != r[i]), 5) for r in train) for g in gen]
    assert longest_training_prefix(gen, train).tolist() == expected


def test_memorization_rejects_mismatched_lengths():
    with pytest.raises(EntropyCliffError, match="share L"):
        memorization(np.zeros((2, 3)), np.zeros((2, 4)))


def toy_images(n, rng):
    """Class 0: horizontal stripes, class 1: vertical stripes, class 2: flat grey (plus noise)."""
    y = rng.integers(0, 3, n)
    stripes = np.where(np.arange(16) % 4 < 2, 60.0, 200.0)
    patterns = np.stack([np.repeat(stripes[:, None], 16, 1), np.repeat(stripes[None, :], 16, 0),
                         np.full((16, 16), 130.0)])
    x = patterns[y][..., None] + rng.normal(0, 20, (n, 16, 16, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


def test_dataset_classifier_learns_caches_and_gives_dfid(tmp_path):
    rng = np.random.default_rng(0)
    xtr, ytr = toy_images(600, rng)
    xva, yva = toy_images(200, rng)
    spec = ClassifierSpec(dataset={"name": "toy"}, channels=3, num_classes=3, steps=60, batch_size=32)
    clf = DatasetClassifier.load_or_train(spec, xtr, ytr, xva, yva, tmp_path)
    assert clf.info["val_accuracy"] > 0.9
    again = DatasetClassifier.load_or_train(spec, xtr[:0], ytr[:0], xva, yva, tmp_path)  # from the cache
    np.testing.assert_array_equal(again(xva)[0], clf(xva)[0])
    on_meta = DatasetClassifier.load_or_train(spec, xtr[:0], ytr[:0], xva, yva, tmp_path, device="meta")
    assert {p.device.type for p in on_meta.net.parameters()} == {"meta"}  # evaluate --device puts it there
    same = generation_metrics(clf, xva, xva)
    assert set(same) == {"dFID", "precision", "recall", "dIS", "dIS_std", "is_splits"} and same["is_splits"] == 10
    assert same["dFID"] == pytest.approx(0, abs=1e-6) and same["precision"] == 1.0
    only_class0 = generation_metrics(clf, xva, xva[yva == 0])
    assert only_class0["dFID"] > 1.0 and only_class0["recall"] < 0.6
    assert same["dIS"] > only_class0["dIS"]
    assert clf.name == CLASSIFIER and clf.dim == 64
    warn = small_sample_warning(clf, 16)
    assert "16 samples is not meaningful" in warn and "1000" in warn and "dataset classifier" in warn
    assert small_sample_warning(clf, 1000) is None


def test_fid_inception_has_the_reference_layout_and_loads_its_own_state_dict(tmp_path):
    import torch

    from vcq.features import inception_extractor, torch_fidelity_status
    from vcq.fid_inception import FIDInceptionV3

    net = FIDInceptionV3()
    state = net.state_dict()
    # torchvision Inception3 names, 1008 classes, no auxiliary head (the pt_inception file's layout)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (1008, 2048) and not any(k.startswith("AuxLogits") for k in state)
    n_params = sum(p.numel() for p in net.parameters())
    # torchvision's inception_v3: 27,161,264 parameters, of which the auxiliary head holds
    # 128*768 + 2*128 + 768*128*25 + 2*768 + 768*1000 + 1000 = 3,326,696; 1008 classes add 8*2049
    assert n_params == 27_161_264 - 3_326_696 + 8 * 2049
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "pt.pth")
    ext = inception_extractor(tmp_path / "pt.pth")
    assert ext.name == (PORT if not torch_fidelity_status()[0] else "torch-fidelity inception-v3-compat")
    assert small_sample_warning(ext, 1000) is not None and small_sample_warning(ext, 20480) is None
    feats, probs = ext(np.random.default_rng(0).integers(0, 256, (2, 20, 20, 1), dtype=np.uint8))
    assert feats.shape == (2, 2048) and probs.shape == (2, 1008)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    torch.save({"fc.weight": state["fc.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(EntropyCliffError, match="not FID Inception-v3 weights"):
        PortInception(tmp_path / "bad.pth")


def _torch_fidelity_reason() -> str:
    from vcq.features import torch_fidelity_status

    return torch_fidelity_status()[1]


@pytest.mark.skipif(not __import__("vcq.features").features.torch_fidelity_status()[0], reason=_torch_fidelity_reason())
def test_port_and_torch_fidelity_give_equal_features_with_the_same_weights(tmp_path):
    """Parity: one weights file in both networks gives the same 2048-d features (299 × 299 input,
    so neither network resizes). Runs wherever torch-fidelity (and torchvision) import."""
    import torch

    from vcq.features import TorchFidelityInception
    from vcq.fid_inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "pt.pth")
    x = np.random.default_rng(0).integers(0, 256, (4, 299, 299, 3), dtype=np.uint8)
    ours, theirs = PortInception(tmp_path / "pt.pth")(x), TorchFidelityInception(tmp_path / "pt.pth")(x)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-4)


def _fake_torch_fidelity(calls):
    """A stand-in for torch-fidelity's ``calculate_metrics`` (the real one needs torchvision): it
    checks its inputs are Datasets of uint8 (3, H, W) tensors and computes the metrics with our
    formulas on stand-in features (pixels as features, the first 10 pixels as logits), treating
    input1 as generated as torch-fidelity does (precision: input1 in the input2 manifold; IS of
    input1, over ``isc_splits`` parts, no shuffling)."""
    import types

    import scipy.special
    import torch

    def feats(ds):
        x = torch.stack([ds[i] for i in range(len(ds))])
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return x.reshape(len(x), -1).double().numpy()

    def calculate_metrics(**kw):
        calls.append(kw)
        f1, f2 = feats(kw["input1"]), feats(kw["input2"])
        out = {}
        if kw.get("fid"):
            out["frechet_inception_distance"] = fid(f2, f1)
        if kw.get("isc"):
            mean, std = inception_score(scipy.special.softmax(f1[:, :10] / 50, axis=1), kw["isc_splits"])
            out.update(inception_score_mean=mean, inception_score_std=std)
        if kw.get("prc"):
            prec, rec = precision_recall(f2, f1, kw["prc_neighborhood"])
            out.update(precision=prec, recall=rec, f_score=2 * prec * rec / max(prec + rec, 1e-12))
        return out

    return types.SimpleNamespace(calculate_metrics=calculate_metrics)


def test_torch_fidelity_calculate_metrics_computes_fid_is_and_precision_recall_where_it_imports(tmp_path, monkeypatch):
    """The glue, through a stand-in module: the call torch-fidelity gets (its Inception from the
    local file, no cache, inputs in the right slots) and the mapping of its results to our names."""
    import sys
    import types

    import scipy.special

    from vcq import tokenizer
    from vcq.evaluate import OURS, metrics_backend, reconstruction_metrics
    from vcq.features import TORCH_FIDELITY, TorchFidelityInception, inception_extractor, rgb_uint8_nchw
    from vcq.fidelity import BACKEND

    calls = []
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torch_fidelity", _fake_torch_fidelity(calls))
    (tmp_path / "pt.pth").write_bytes(b"weights")
    ext = inception_extractor(tmp_path / "pt.pth")
    assert isinstance(ext, TorchFidelityInception) and ext.name == TORCH_FIDELITY and metrics_backend(ext) == BACKEND
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (30, 2, 2, 1), dtype=np.uint8)
    fake = (rng.integers(0, 256, (20, 2, 2, 1)) // 2 + 60).astype(np.uint8)  # narrower than real
    got = generation_metrics(ext, real, fake)
    rf, ff = (rgb_uint8_nchw(x).reshape(len(x), -1).double().numpy() for x in (real, fake))
    prec, rec = precision_recall(rf, ff, 3)
    is_mean, is_std = inception_score(scipy.special.softmax(ff[:, :10] / 50, axis=1), 10)
    assert got == {"FID": pytest.approx(fid(rf, ff)), "precision": prec, "recall": rec, "IS": pytest.approx(is_mean),
                   "IS_std": pytest.approx(is_std), "is_splits": 10}
    assert prec != rec  # the slots are distinguishable: swapping input1 and input2 would swap them
    kw = calls[-1]
    assert kw["feature_extractor"] == "inception-v3-compat" and kw["feature_extractor_weights_path"] == str(tmp_path / "pt.pth")
    assert (kw["fid"], kw["isc"], kw["prc"], kw["cache"], kw["cuda"], kw["prc_neighborhood"]) == (True, True, True, False, False, 3)
    assert generation_metrics(ext, real, fake[:6])["is_splits"] == 1 and calls[-1]["isc_splits"] == 1
    monkeypatch.setattr(tokenizer, "reconstruct", lambda tok, images: fake[:len(images)])
    assert reconstruction_metrics(None, real[:20], ext)["rFID"] == pytest.approx(fid(rf[:20], ff))
    assert (calls[-1]["isc"], calls[-1]["prc"]) == (False, False)
    assert metrics_backend(PortInception.__new__(PortInception)) == OURS


@pytest.mark.skipif(not __import__("vcq.features").features.torch_fidelity_status()[0], reason=_torch_fidelity_reason())
def test_torch_fidelity_metrics_equal_ours_with_the_same_weights(tmp_path):
    """Parity: torch-fidelity's calculate_metrics and our formulas on our port, one weights file
    (299 × 299 images, so neither network resizes; 9 samples: IS over one split, where
    torch-fidelity's shuffling cannot matter). Runs wherever torch-fidelity imports."""
    import torch

    from vcq.features import TorchFidelityInception
    from vcq.fid_inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "pt.pth")
    rng = np.random.default_rng(0)
    real, fake = (rng.integers(0, 256, (n, 299, 299, 3), dtype=np.uint8) for n in (12, 9))
    ours = generation_metrics(PortInception(tmp_path / "pt.pth"), real, fake)
    theirs = generation_metrics(TorchFidelityInception(tmp_path / "pt.pth"), real, fake)
    assert theirs["FID"] == pytest.approx(ours["FID"], rel=1e-3) and theirs["IS"] == pytest.approx(ours["IS"], rel=1e-4)
    assert abs(theirs["precision"] - ours["precision"]) <= 1 / 9 and abs(theirs["recall"] - ours["recall"]) <= 1 / 12


def test_the_jpeg_anchor_compresses_the_images_evaluate_reconstructs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from entropy_cliff.io import write_json_atomic
    from vcq import evaluate
    from vcq.data import DataSpec
    from vcq.jpeg_anchor import tokenizer_val_crops
    from vcq.presets import TokenizerConfig, TrainConfig
    from vcq.tokenizer import Tokenizer1D
    from vcq.train import save_weights
    from vcq.train_tokenizer import run_config

    model = TokenizerConfig(image_size=8, patch_size=4, num_latent=6, enc_width=16, enc_depth=1, enc_heads=2,
                            dec_width=16, dec_depth=1, dec_heads=2, code_dim=4, kmax=32)
    run = tmp_path / "tok"
    run.mkdir()
    write_json_atomic(run / "config.json", run_config(model, TrainConfig(), DataSpec("shapes", n=200), "test"))
    save_weights(run / "model.safetensors", Tokenizer1D(model), 0)  # untrained: only the images matter here
    seen = []
    monkeypatch.setattr(evaluate, "inception_extractor",
                        lambda path, dev: SimpleNamespace(dim=4, fid_name="FID", name="stub"))
    monkeypatch.setattr(evaluate, "reconstruction_metrics", lambda tok, images, ext: seen.append(images) or {})
    evaluate.evaluate_run(None, None, run, inception_path=tmp_path / "none", n_recon=7, seed=3)
    crops = tokenizer_val_crops(run, 7, 3)
    assert crops.shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(crops, seen[0])
    val = DataSpec("shapes", n=200).load("val", model, augment=False)  # 20 images: a seeded subset, not the first 7
    np.testing.assert_array_equal(crops, val.images(np.sort(np.random.default_rng(3).permutation(len(val))[:7])))
    assert not np.array_equal(crops, val.images(np.arange(7)))
    assert len(tokenizer_val_crops(run, 1000, 0)) == len(val)  # n beyond the split: all of it
