"""vcq.ar: masking past K_t, causality, cached decoding, parameter counts of the paper presets."""

import math

import numpy as np
import pytest
import torch

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule
from vcq.ar import ARTransformer, KVCache
from vcq.presets import AR_PRESETS, ARConfig, override


def tiny_model(K=(2, 3, 5, 8, 8, 13), num_classes=4, seed=0, **kw) -> ARTransformer:
    torch.manual_seed(seed)
    cfg = ARConfig(dim=32, depth=2, heads=4, ffn_multiple_of=16, num_classes=num_classes, K=tuple(K), **kw)
    return ARTransformer(cfg).eval()


def test_masked_logits_have_zero_probability_past_K_t():
    model = tiny_model()
    tokens = torch.tensor([[1, 2, 4, 7, 7, 12], [0, 0, 0, 0, 0, 0]])
    logits = model(tokens[:, :-1], torch.tensor([0, 3]))
    probs = torch.softmax(logits, dim=-1)
    for t, k in enumerate(model.cfg.K):
        assert torch.all(probs[:, t, k:] == 0)
        assert torch.all(probs[:, t, :k] > 0)
        torch.testing.assert_close(probs[:, t, :k].sum(-1), torch.ones(2))


def test_loss_equals_cross_entropy_over_the_valid_codes_only():
    model = tiny_model()
    tokens = torch.tensor([[1, 2, 4, 7, 7, 12]])
    labels = torch.tensor([2])
    raw = model.head(model.norm(_hidden(model, tokens, labels)))[0]
    expected = np.mean([-torch.log_softmax(raw[t, :k], -1)[tokens[0, t]].item()
                        for t, k in enumerate(model.cfg.K)])
    assert model.loss(tokens, labels).item() == pytest.approx(expected, rel=1e-5)
    bits = model.nll_bits_per_position(tokens, labels)
    assert bits.mean().item() == pytest.approx(expected / math.log(2), rel=1e-5)


def _hidden(model, tokens, labels):
    h = torch.cat([model.class_emb(labels)[:, None], model.tok_emb(tokens[:, :-1])], 1)
    for i, blk in enumerate(model.blocks):
        h = blk(h, model.rope_cos, model.rope_sin, None, i)
    return h


def test_causal_future_tokens_do_not_change_earlier_logits():
    model = tiny_model()
    a = torch.tensor([[1, 2, 4, 7, 7, 12]])
    b = a.clone()
    b[0, 3:] = torch.tensor([0, 1, 2])
    la, lb = model(a[:, :-1], torch.tensor([1])), model(b[:, :-1], torch.tensor([1]))
    torch.testing.assert_close(la[:, :4], lb[:, :4])
    assert not torch.allclose(la[:, 4:].nan_to_num(), lb[:, 4:].nan_to_num())


def test_kv_cache_gives_the_same_logits_as_full_recompute():
    model = tiny_model()
    tokens = torch.tensor([[1, 2, 4, 7, 7, 12], [0, 1, 3, 2, 6, 9]])
    labels = torch.tensor([0, 4])  # 4 = null class
    full = model(tokens[:, :-1], labels)
    cache = KVCache.empty(model, 2, "cpu", torch.float32)
    steps = [model(tokens[:, :t], labels, cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    # a cache filled in two chunks agrees too
    cache = KVCache.empty(model, 2, "cpu", torch.float32)
    first = model(tokens[:, :2], labels, cache)
    rest = model(tokens[:, :5], labels, cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)


def test_label_dropout_replaces_a_tenth_of_labels_in_training_only():
    model = tiny_model(num_classes=7)
    labels = torch.zeros(20000, dtype=torch.long)
    assert torch.equal(model.drop_labels(labels), labels)
    model.train()
    torch.manual_seed(1)
    dropped = model.drop_labels(labels)
    assert set(dropped.unique().tolist()) == {0, 7}
    assert (dropped == 7).float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_no_biases_and_rmsnorm_only():
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


@pytest.mark.parametrize("name,millions", [("B", 115), ("L", 343), ("XL", 684)])
def test_paper_presets_match_the_paper_parameter_counts(name, millions):
    # paper Appendix A: AR-B 115M, AR-L 343M, AR-XL 684M at K_max = 16384, L = 256, 1000 classes
    cfg = override(AR_PRESETS[name].model, K=tuple(int(k) for k in Schedule("cosine", 2, 16384, 256).K),
                   num_classes=1000)
    with torch.device("meta"):
        model = ARTransformer(cfg)
    assert model.num_parameters() / 1e6 == pytest.approx(millions, rel=0.04)


def test_bad_configs_are_refused():
    with pytest.raises(EntropyCliffError, match="no codebook sizes"):
        ARTransformer(ARConfig())
    with pytest.raises(EntropyCliffError, match="heads"):
        ARTransformer(ARConfig(dim=30, heads=4, K=(4, 4)))
    model = tiny_model()
    with pytest.raises(EntropyCliffError, match="exceeds"):
        model(torch.zeros(1, 6, dtype=torch.long), torch.tensor([0]))
