"""vcq.train_ar: AR training on the shared loop: learning, bit-exact resume, per-position NLL, bad dumps."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import labels_path, save_tokens
from vcq.presets import ARConfig, TrainConfig, to_dict
from vcq.sampling import sample
from vcq.train_ar import ar_config_for_dump, load_ar, load_token_dump, run_config, train_ar

K = [2, 4, 8, 8, 16, 16]


def make_dump(path, n=256, seed=0, K=K):
    """Tokens determined by the label at position 1, random elsewhere (so H_1 > 0, later mixed)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    tokens = np.column_stack([labels % K[0]] + [rng.integers(0, k, n) if t % 2 else (labels * (t + 1)) % k
                                                  for t, k in enumerate(K[1:], 1)])
    save_tokens(path / "tokens.npy", tokens, K, {"kind": "custom", "kmin": 2, "kmax": 16, "power": None},
                labels=labels)
    return path / "tokens.npy"


def config_for(tokens_path, steps=12, **data):
    dump = load_token_dump(tokens_path)
    model = ar_config_for_dump(ARConfig(dim=32, depth=2, heads=2, ffn_multiple_of=16), dump)
    train = TrainConfig(steps=steps, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=2, weight_decay=0.03,
                        ckpt_every=4, log_every=2, bf16=False)
    return run_config(model, train, {"tokens": str(tokens_path), "labels": str(labels_path(tokens_path)),
                                     "val_fraction": 0.25, **data}, "test")


def test_training_lowers_the_per_position_nll_and_writes_the_run(tmp_path):
    tok = make_dump(tmp_path)
    cfg = config_for(tok, steps=60)
    result, nll = train_ar(cfg, tmp_path / "run", quiet=True)
    assert result.step == 60
    run = tmp_path / "run"
    for f in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "nll.json"):
        assert (run / f).is_file()
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_bits_per_token"] > rows[-1]["train_bits_per_token"]
    assert "val_bits_per_token" in rows[-1]
    assert len(nll["train_nll_bits"]) == len(K) and len(nll["val_nll_bits"]) == len(K)
    assert nll["train_rows"] == 192 and nll["val_rows"] == 64
    # the data's H(X_t | X_<t, c): position 1 (label % 2) and the label-determined positions are 0
    h = nll["data_H_cond_bits"]
    assert h[0] == 0.0 and h[2] == 0.0 and h[4] == 0.0 and 0 < h[1] <= 2.0
    # a position that is a function of the label is learned below its uniform log2 K_t
    assert nll["val_nll_bits"][2] < np.log2(K[2]) - 1.0
    # the saved model reproduces the summary and samples tokens < K_t
    model = load_ar(run)
    assert model.cfg.K == tuple(K) and model.cfg.num_classes == 4
    toks = sample(model, np.arange(4))
    assert torch.all(toks < model.K)


def test_resume_is_bit_exact(tmp_path):
    tok = make_dump(tmp_path)
    cfg = config_for(tok, steps=12)
    train_ar(cfg, tmp_path / "straight", quiet=True)
    train_ar(cfg, tmp_path / "split", quiet=True, stop_at=8)
    train_ar(cfg, tmp_path / "split", quiet=True, resume=True)
    a, b = load_file(str(tmp_path / "straight/model.safetensors")), load_file(str(tmp_path / "split/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: (tmp_path / d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    strip = lambda r: {k: v for k, v in json.loads(r).items() if k != "steps_per_s"}  # noqa: E731
    assert [strip(r) for r in rows("straight")] == [strip(r) for r in rows("split")]


def test_separate_validation_dump_must_share_K_t(tmp_path):
    tok = make_dump(tmp_path)
    (tmp_path / "val").mkdir()
    bad_val = make_dump(tmp_path / "val", n=32, K=[2, 4, 8, 8, 16, 32])
    with pytest.raises(EntropyCliffError, match="sidecar K_t disagree"):
        train_ar(config_for(tok, val_tokens=str(bad_val)), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_bad_dumps_are_refused(tmp_path):
    tok = make_dump(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros(10, np.int64))
    with pytest.raises(EntropyCliffError, match="10 labels for 256"):
        load_token_dump(tok, tmp_path / "short.npy")
    dump = load_token_dump(tok)
    with pytest.raises(EntropyCliffError, match="class id 3 out of range for 2 classes"):
        ar_config_for_dump(ARConfig(), dump, num_classes=2)
    meta = json.loads((tmp_path / "tokens.meta.json").read_text())
    meta["K"] = [2, 2, 8, 8, 16, 16]
    (tmp_path / "tokens.meta.json").write_text(json.dumps(meta))
    with pytest.raises(EntropyCliffError, match="position t = 2 is >= K_t = 2"):
        load_token_dump(tok)
    (tmp_path / "tokens.meta.json").unlink()
    with pytest.raises(EntropyCliffError, match="no sidecar"):
        load_token_dump(tok)


def test_config_round_trips_through_json(tmp_path):
    cfg = config_for(make_dump(tmp_path))
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["model"]["K"] == K and cfg["train"] == to_dict(TrainConfig(**cfg["train"]))


# ------------------------------------------------------------------------------------------
# command line: train-ar -> sample -> evaluate, and bad input (exit 2, one line, no output)

from click.testing import CliRunner  # noqa: E402

from vcq.cli import main  # noqa: E402


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tok = make_dump(d, n=256)
    res = run_cli("train-ar", "--tokens", tok, "--dim", 32, "--depth", 1, "--heads", 2, "--steps", 6,
                  "--batch-size", 16, "--ckpt-every", 3, "--out", d / "run", "--quiet")
    assert res.exit_code == 0, res.output
    return d, tok, res.output


def test_cli_train_sample_evaluate(cli_run):
    d, tok, out = cli_run
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["t", "K_t", "log2K", "H_t|c", "train", "val"] and len(lines) == 2 + len(K)
    res = run_cli("sample", "--ckpt", d / "run", "--n", 10, "--preset", "vcq-cosine", "--top-k", 5, "--out", d / "s")
    assert res.exit_code == 0, res.output
    toks = np.load(d / "s/tokens.npy")
    assert toks.shape == (10, len(K)) and np.all(toks < np.array(K))
    assert np.load(d / "s/tokens.labels.npy").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert json.loads((d / "s/tokens.meta.json").read_text())["K"] == K
    res = run_cli("evaluate", "--samples", d / "s", "--ckpt", d / "run", "--probe-k", "1,all", "--out", d / "ev.json",
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    ev = json.loads((d / "ev.json").read_text())
    assert ev["device"] == "cpu"
    assert [r["tokens"] for r in ev["linear_probe"]["table"]] == [1, len(K)]
    assert len(ev["memorization"]["generated"]["prefix_share"]) == len(K)
    assert ev["memorization"]["generated"]["prefix_share"][0] == 1.0  # position 1 has K_1 = 2 codes, both seen


@pytest.mark.parametrize("args,msg", [
    (["sample", "--scale", "-1"], "guidance scale must be a finite number >= 0"),
    (["sample", "--top-p", "1.5"], "top_p must lie in (0, 1]"),
    (["sample", "--top-p", "0"], "top_p must lie in (0, 1]"),
    (["sample", "--class", "0,7"], "class ids must lie in [0, 4)"),
    (["sample", "--n", "1000000000000", "--scale", "2"], "sampling n = 1000000000000 sequences at once needs about"),
    (["sample", "--schedule", "none", "--scale", "3"], "scale = 3.0 would be ignored"),
    (["sample", "--device", "tpu9"], "device = 'tpu9' is not a device"),
])
def test_cli_bad_sampling_input(cli_run, args, msg):
    d, _, _ = cli_run
    res = run_cli(*args[:1], "--ckpt", d / "run", "--out", d / "bad", *args[1:])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("vcq: error: ") and msg in lines[0]
    assert not (d / "bad").exists()


def test_cli_bad_training_input(cli_run, tmp_path):
    _, tok, _ = cli_run
    np.save(tmp_path / "short.npy", np.zeros(5, np.int64))
    for args, msg in ((["--labels", tmp_path / "short.npy"], "5 labels for 256"),
                      (["--num-classes", 3], "class id 3 out of range for 3 classes")):
        res = run_cli("train-ar", "--tokens", tok, "--steps", 2, "--out", tmp_path / "r", *args)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and msg in res.output
        assert not (tmp_path / "r").exists()


def _tokenizer_run(path, kmax):
    from vcq.presets import TokenizerConfig
    from vcq.data import DataSpec
    from vcq.tokenizer import Tokenizer1D
    from vcq.train_tokenizer import run_config as tokenizer_run_config
    from vcq.train import save_weights

    cfg = TokenizerConfig(image_size=8, patch_size=4, num_latent=6, enc_width=16, enc_depth=1, enc_heads=2,
                          dec_width=16, dec_depth=1, dec_heads=2, code_dim=4, kmin=2, kmax=kmax)
    path.mkdir()
    (path / "config.json").write_text(json.dumps(tokenizer_run_config(cfg, TrainConfig(), DataSpec(), "test")))
    save_weights(path / "model.safetensors", Tokenizer1D(cfg), 1)
    return path


def test_cli_sample_decodes_a_grid_and_refuses_a_tokenizer_with_other_K_t(tmp_path):
    cosine_K = [2, 3, 5, 8, 12, 16]  # Schedule("cosine", 2, 16, 6).K
    tok = make_dump(tmp_path, n=64, K=cosine_K)
    assert run_cli("train-ar", "--tokens", tok, "--dim", 16, "--depth", 1, "--heads", 2, "--steps", 2,
                   "--batch-size", 8, "--out", tmp_path / "run", "--quiet").exit_code == 0
    good, bad = _tokenizer_run(tmp_path / "tok16", 16), _tokenizer_run(tmp_path / "tok32", 32)
    res = run_cli("sample", "--ckpt", tmp_path / "run", "--tokenizer", good, "--n", 6, "--cols", 3, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "s/grid.png"))
    # 2 rows x 3 columns of 8x8 images upscaled 12x to 96-pixel cells, each under a 12-pixel caption
    assert grid.shape == (2 * (12 + 96 + 2) + 2, 3 * (96 + 2) + 2, 3)
    assert (grid[2:14, 2:98] < 128).any()  # the caption "class 0" is drawn above the first cell
    res = run_cli("evaluate", "--samples", tmp_path / "s", "--tokenizer", good, "--n-real", 40, "--n-recon", 20,
                  "--cache-dir", tmp_path / "cache", "--out", tmp_path / "ev.json", "--quiet")
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["feature_extractor"] == "dataset classifier (dFID; not comparable to FID)"
    assert ev["metrics_backend"] == "entropy-cliff vcq.metrics"  # torch-fidelity computes FID on its own network only
    assert "features: dataset classifier (dFID; not comparable to FID); metrics: entropy-cliff vcq.metrics" in res.output
    warn = "generation: dFID from 6 samples is not meaningful: use at least 1000"
    assert any(w.startswith(warn) for w in ev["warnings"]) and f"vcq: warning: {warn}" in res.output
    assert ev["generation"]["is_splits"] == 1 and ev["reconstruction"]["images"] == 20
    res = run_cli("sample", "--ckpt", tmp_path / "run", "--tokenizer", bad, "--out", tmp_path / "s2")
    assert res.exit_code == 2 and "K_t disagree" in res.output and not (tmp_path / "s2").exists()


def test_cli_resume_keeps_the_runs_data_settings(cli_run, tmp_path):
    _, tok, _ = cli_run
    small = ["--dim", 32, "--depth", 1, "--heads", 2, "--steps", 4, "--batch-size", 16, "--ckpt-every", 2, "--quiet"]
    res = run_cli("train-ar", "--tokens", tok, *small, "--val-fraction", 0.1, "--stop-at", 2, "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    res = run_cli("train-ar", "--tokens", tok, "--resume", "--quiet", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["data"]["val_fraction"] == 0.1
    assert [json.loads(ln)["step"] for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1] == 4
