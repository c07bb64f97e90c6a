"""vcq.sampling: guidance_scales against SPEC §5, KV cache vs recompute, tokens < K_t, filters."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule
from vcq.ar import ARTransformer
from vcq.presets import SAMPLING_PRESETS, ARConfig, SamplingConfig
from vcq.sampling import capacity_ratio, filter_logits, guidance_scales, sample

K_COS = Schedule("cosine", 2, 16384, 256).K


def test_pow_cosine_ramp_matches_the_formula_position_by_position():
    w, p, L = 4.0, 1.5, 256
    s = guidance_scales(np.full(L, 1024), w, "cosine", p)
    for t in (1, 2, 100, 256):
        assert s[t - 1] == pytest.approx(1 + (w - 1) * (1 - math.cos(math.pi * ((t - 1) / L) ** p)) / 2)
    assert s[0] == 1.0  # the ramp starts without guidance


def test_power_zero_gives_constant_w_and_none_gives_one():
    np.testing.assert_allclose(guidance_scales(K_COS, 7.0, "cosine", 0.0), 7.0)
    np.testing.assert_allclose(guidance_scales(K_COS, 7.0, "constant"), 7.0)
    np.testing.assert_array_equal(guidance_scales(K_COS, 7.0, "none", codebook_aware=True), 1.0)
    lin = guidance_scales(np.full(4, 8), 5.0, "linear")
    np.testing.assert_allclose(lin, [1.0, 2.0, 3.0, 4.0])


def test_codebook_aware_end_points():
    base = guidance_scales(K_COS, 10.0, "cosine", 1.5)
    aware = guidance_scales(K_COS, 10.0, "cosine", 1.5, codebook_aware=True)
    assert K_COS[0] == 2 and aware[0] == 1.0  # K_t = K_min -> no guidance
    at_max = K_COS == K_COS.max()
    np.testing.assert_allclose(aware[at_max], base[at_max])  # K_t = K_max -> base schedule
    assert np.all((aware - 1) <= (base - 1) + 1e-12) and np.all(aware >= 1)
    const = guidance_scales(K_COS, 3.0, "constant", codebook_aware=True)
    t = 100
    r = (math.log2(K_COS[t]) - 1) / (14 - 1)
    assert const[t] == pytest.approx(1 + r * 2.0)


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 1 << 16), L=st.integers(1, 300), w=st.floats(0, 50),
       p=st.floats(0, 4), sched=st.sampled_from(["none", "constant", "linear", "cosine"]),
       ratio=st.sampled_from(["log", "linear"]))
def test_uniform_codebook_gives_standard_cfg_exactly(k, L, w, p, sched, ratio):
    kt = np.full(L, k)
    np.testing.assert_array_equal(guidance_scales(kt, w, sched, p, True, ratio), guidance_scales(kt, w, sched, p))


def test_linear_ratio_option():
    kt = np.array([2, 5, 8])
    np.testing.assert_allclose(capacity_ratio(kt, "linear"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(capacity_ratio(kt, "log"), [0.0, (math.log2(5) - 1) / 2, 1.0])


@pytest.mark.parametrize("bad", [dict(scale=-0.5), dict(scale=float("nan")), dict(schedule="cos"),
                                 dict(power=-1.0)])
def test_bad_guidance_arguments(bad):
    args = dict(k_t=K_COS, scale=2.0, schedule="cosine", power=1.0) | bad
    with pytest.raises(EntropyCliffError):
        guidance_scales(**args)


def tiny_model(K=(2, 3, 5, 8, 8, 13, 16, 16), num_classes=3, seed=0):
    torch.manual_seed(seed)
    return ARTransformer(ARConfig(dim=32, depth=2, heads=4, ffn_multiple_of=16, num_classes=num_classes, K=K)).eval()


CONFIGS = [SamplingConfig(), SamplingConfig(temperature=0.7, top_k=3),
           SamplingConfig(top_p=0.6, scale=4.0, schedule="cosine", power=1.5, codebook_aware=True),
           SamplingConfig(scale=2.0, schedule="constant")]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_kv_cache_sampling_equals_full_recompute(cfg):
    model = tiny_model()
    labels = np.array([0, 1, 2, 0, 1, 2])
    a = sample(model, labels, cfg, seed=5, use_cache=True)
    b = sample(model, labels, cfg, seed=5, use_cache=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(model, labels, cfg, seed=6))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_sampled_tokens_are_always_below_K_t(cfg):
    # a head biased hard towards the largest index tempts the sampler past K_t
    model = tiny_model()
    with torch.no_grad():
        model.head.weight[-1] += 5.0
    toks = sample(model, np.arange(3).repeat(40), cfg, seed=1)
    assert toks.shape == (120, 8)
    assert torch.all(toks < model.K) and torch.all(toks >= 0)
    # every valid code at the last positions is reachable in 120 draws with temperature 1
    if cfg == SamplingConfig():
        assert set(toks[:, 0].tolist()) == {0, 1}


def test_sampling_frequencies_follow_the_model_distribution():
    model = tiny_model(K=(5, 5), num_classes=1)
    labels = np.zeros(4000, dtype=int)
    toks = sample(model, labels, SamplingConfig(temperature=1.0), seed=0)
    with torch.no_grad():
        p = torch.softmax(model(torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]))[0, 0], -1).numpy()
    freq = np.bincount(toks[:, 0].numpy(), minlength=5) / len(labels)
    np.testing.assert_allclose(freq, p, atol=0.03)


def test_filters_keep_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


@pytest.mark.parametrize("bad,msg", [(dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                                     (dict(scale=-1.0), "scale"), (dict(temperature=0.0), "temperature"),
                                     (dict(top_k=-1), "top_k"), (dict(schedule="ramp"), "schedule"),
                                     (dict(scale=4.0, schedule="none"), "scale = 4.0 would be ignored")])
def test_bad_sampling_settings_are_refused_when_the_config_is_built(bad, msg):
    with pytest.raises(EntropyCliffError, match=msg):
        SamplingConfig(**bad)


def test_a_scale_alone_means_standard_constant_cfg():
    """SamplingConfig(scale=4) guides with s_t = 4 at every position: it cannot silently do nothing."""
    cfg = SamplingConfig(scale=4.0)
    k = tiny_model().K.numpy()
    np.testing.assert_array_equal(guidance_scales(k, cfg.scale, cfg.schedule, cfg.power, cfg.codebook_aware),
                                  np.full(len(k), 4.0))
    seen = []
    sample(tiny_model(), np.arange(3), cfg, seed=0, observe=lambda t, lg: seen.append(lg.shape[0]))
    assert seen == [3] * 8  # guided: the sampler mixed 3 conditional with 3 null-class rows


def test_cfg_mixing_matches_an_independent_computation():
    """The sampler's logits at every step equal l_u + s_t (l_c - l_u), with l_c and l_u from two
    separate full forward passes (no cache, true and null class) and s_t computed here by hand from
    the pow-cosine ramp and the log capacity ratio (SPEC §5)."""
    model = tiny_model()
    K = [int(k) for k in model.K]
    L, w, p = len(K), 3.0, 1.5
    cfg = SamplingConfig(scale=w, schedule="cosine", power=p, codebook_aware=True, temperature=0.8)
    labels = torch.tensor([0, 1, 2, 1])
    seen = {}
    tokens = sample(model, labels, cfg, seed=3, observe=lambda t, lg: seen.__setitem__(t, lg.clone()))
    lo, hi = math.log2(min(K)), math.log2(max(K))
    null = torch.full_like(labels, model.cfg.num_classes)
    with torch.no_grad():
        for t in range(L):
            base = 1 + (w - 1) * (1 - math.cos(math.pi * (t / L) ** p)) / 2
            s_t = 1 + (math.log2(K[t]) - lo) / (hi - lo) * (base - 1)
            l_c = model(tokens[:, :t], labels)[:, -1]
            l_u = model(tokens[:, :t], null)[:, -1]
            expect = (l_u + s_t * (l_c - l_u)) / cfg.temperature
            valid = torch.arange(model.cfg.kmax) < K[t]
            got = seen[t]
            assert torch.isinf(got[:, ~valid]).all() and (got[:, ~valid] < 0).all()
            torch.testing.assert_close(got[:, valid], expect[:, valid], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.softmax(got, -1)[:, valid], torch.softmax(expect[:, valid], -1),
                                       rtol=1e-5, atol=1e-6)
    assert s_t != 1.0  # the last positions are guided


def test_a_sampling_request_beyond_memory_is_refused_at_once(monkeypatch):
    from vcq import resources

    model = tiny_model()
    need = resources.sampling_bytes(model.cfg.depth, model.cfg.dim, model.cfg.length, model.cfg.kmax, 6, True)
    assert need == 4 * 12 * (2 * 2 * 8 * 32 + 3 * 16)  # KV cache + logits/noise of 2 x 6 rows
    monkeypatch.setattr(resources, "available_bytes", lambda device: need)  # 90% of it is not enough
    with pytest.raises(EntropyCliffError, match="sampling n = 6 sequences at once needs about"):
        sample(model, np.arange(6) % 3, SamplingConfig(scale=2.0))
    sample(model, np.arange(6) % 3, SamplingConfig())  # unguided: half the rows fit


def test_ctrl_c_while_sampling_names_what_happened(monkeypatch):
    model = tiny_model()

    def interrupt(t, logits):
        if t == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="sampling stopped at token 3 of 8; nothing was written"):
        sample(model, np.arange(3), SamplingConfig(), observe=interrupt)


def test_out_of_range_class_ids():
    with pytest.raises(EntropyCliffError, match="class ids"):
        sample(tiny_model(num_classes=3), np.array([0, 3]))


def test_table7_presets():
    assert SAMPLING_PRESETS["vcq-L-XL"] == SamplingConfig(1.0, 3, "cosine", 1.0, True)
    assert SAMPLING_PRESETS["vcq-cosine-nocfg"].temperature == 0.85
    assert np.all(guidance_scales(K_COS, **_g(SAMPLING_PRESETS["vcq-B-L-nocfg"])) == 1.0)


def _g(cfg):
    return dict(scale=cfg.scale, schedule=cfg.schedule, power=cfg.power, codebook_aware=cfg.codebook_aware)


# ------------------------------------------------------------- batch-independent noise, batched runs

def _splitmix_reference(x):
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_gumbel_noise_is_splitmix64_of_seed_sample_token_code():
    from vcq.sampling import gumbel_noise

    g = gumbel_noise(12345, torch.tensor([0, 7, 123456789]), 5, 4).double()
    for r, i in enumerate([0, 7, 123456789]):
        key = _splitmix_reference((_splitmix_reference((_splitmix_reference(12345) + i) % 2**64) + 5) % 2**64)
        for k in range(4):
            u = ((_splitmix_reference((key + k) % 2**64) >> 11) + 0.5) * 2.0**-53
            assert g[r, k].item() == pytest.approx(-math.log(-math.log(u)), rel=1e-6)
    big = gumbel_noise(0, torch.arange(200), 3, 500).double()  # 1e5 draws: mean 0.5772, variance pi^2/6
    assert big.mean().item() == pytest.approx(0.5772, abs=0.02)
    assert big.var().item() == pytest.approx(math.pi**2 / 6, rel=0.03)


@pytest.mark.parametrize("cfg", [SamplingConfig(), CONFIGS[2]])
def test_batched_sampling_equals_one_call(cfg):
    model = tiny_model()
    labels = np.arange(7) % 3
    seen_all, seen_parts = {}, {}
    whole = sample(model, labels, cfg, seed=4, observe=lambda t, lg: seen_all.setdefault(t, lg.clone()))
    parts = [sample(model, labels[a:b], cfg, seed=4, first=a,
                    observe=lambda t, lg: seen_parts.setdefault(t, []).append(lg.clone())) for a, b in ((0, 3), (3, 7))]
    assert torch.equal(whole, torch.cat(parts))
    for t, lg in seen_all.items():
        torch.testing.assert_close(torch.cat(seen_parts[t]), lg, rtol=1e-5, atol=1e-5)


def test_bf16_sampling_keeps_the_kv_cache_in_bf16(monkeypatch):
    from vcq import ar

    made = []
    real = ar.KVCache.empty.__func__
    monkeypatch.setattr(ar.KVCache, "empty", classmethod(lambda cls, *a: made.append(a[-1]) or real(cls, *a)))
    toks = sample(tiny_model(), np.arange(5) % 3, SamplingConfig(scale=2.0), seed=1, bf16=True)
    assert made == [torch.bfloat16]
    assert np.all(toks.numpy() < np.array(tiny_model().cfg.K))


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    from entropy_cliff.io import save_tokens
    from vcq.presets import TrainConfig
    from vcq.train_ar import ar_config_for_dump, load_token_dump, run_config, train_ar

    d = tmp_path_factory.mktemp("ar")
    rng = np.random.default_rng(0)
    K = [2, 4, 8, 8]
    save_tokens(d / "t.npy", np.column_stack([rng.integers(0, k, 64) for k in K]), K,
                {"kind": "custom", "kmin": 2, "kmax": 8, "power": None}, labels=rng.integers(0, 3, 64))
    model = ar_config_for_dump(ARConfig(dim=16, depth=1, heads=2, ffn_multiple_of=16), load_token_dump(d / "t.npy"))
    train = TrainConfig(steps=2, batch_size=8, ckpt_every=2, log_every=2, bf16=False)
    train_ar(run_config(model, train, {"tokens": str(d / "t.npy"), "nll_rows": 8}, "test"), d / "run", quiet=True)
    return d / "run"


def test_sample_run_in_batches_resumes_and_equals_one_batch(ar_run, tmp_path, monkeypatch):
    from vcq import sampling

    cfg = SamplingConfig(scale=2.0)
    one = sampling.sample_run(ar_run, tmp_path / "one", n=10, cfg=cfg, seed=3)
    real, calls = sampling.sample, []

    def interrupt_second(*a, **kw):
        calls.append(kw["first"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sampling, "sample", interrupt_second)
    with pytest.raises(KeyboardInterrupt, match="3 of 10 samples are kept in .*partial; --resume continues"):
        sampling.sample_run(ar_run, tmp_path / "b", n=10, cfg=cfg, seed=3, batch_size=3)
    assert sorted(p.name for p in (tmp_path / "b/partial").iterdir()) == ["request.json", "rows-0000000000.npy"]
    assert not (tmp_path / "b/tokens.npy").exists()
    with pytest.raises(EntropyCliffError, match="unfinished sampling request"):
        sampling.sample_run(ar_run, tmp_path / "b", n=10, cfg=cfg, seed=3, batch_size=3)
    with pytest.raises(EntropyCliffError, match="seed = 3, not 4"):
        sampling.sample_run(ar_run, tmp_path / "b", n=10, cfg=cfg, seed=4, batch_size=3, resume=True)
    res = sampling.sample_run(ar_run, tmp_path / "b", n=10, cfg=cfg, seed=3, batch_size=4, resume=True)
    assert calls == [0, 3, 3, 7]  # resumed after the kept batch, with the new batch size
    np.testing.assert_array_equal(np.load(tmp_path / "b/tokens.npy"), one.tokens)
    np.testing.assert_array_equal(res.labels, one.labels)
    assert not (tmp_path / "b/partial").exists()


def test_weights_that_do_not_fit_the_config_are_one_line_exit_2(ar_run, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from vcq.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(ar_run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["dim"] = 32  # every tensor's shape now differs from the saved weights
    (bad / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["sample", "--ckpt", str(bad), "--n", "2", "--out", str(tmp_path / "s"), "--quiet"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith(f"vcq: error: {bad / 'model.safetensors'}: weights do not match config.json (size mismatch")
    (bad / "model.safetensors").unlink()
    with pytest.raises(EntropyCliffError, match="model.safetensors: no such weights file"):
        from vcq.train_ar import load_ar

        load_ar(bad)


def test_ctrl_c_in_the_first_batch_leaves_nothing_that_blocks_a_plain_rerun(ar_run, tmp_path, monkeypatch):
    from vcq import sampling

    cfg = SamplingConfig(scale=2.0)
    real = sampling.sample

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "sample", interrupt)
    with pytest.raises(KeyboardInterrupt, match="starting at sample 0; nothing was kept"):
        sampling.sample_run(ar_run, tmp_path / "c", n=6, cfg=cfg, seed=1, batch_size=3)
    assert not (tmp_path / "c/partial").exists()
    monkeypatch.setattr(sampling, "sample", real)
    (tmp_path / "c/partial").mkdir()  # a request killed before its first batch was saved (no Ctrl-C handler ran)
    (tmp_path / "c/partial/request.json").write_text("{}")
    res = sampling.sample_run(ar_run, tmp_path / "c", n=6, cfg=cfg, seed=1, batch_size=3)
    np.testing.assert_array_equal(res.tokens, sampling.sample_run(ar_run, tmp_path / "d", n=6, cfg=cfg, seed=1).tokens)
    assert not (tmp_path / "c/partial").exists()
