"""1D tokenizer, its losses and checkpoint loading."""

import json

import numpy as np
import pytest
import torch

from entropy_cliff.errors import EntropyCliffError
from vcq.losses import LPIPS, PatchDiscriminator, hinge_d_loss, hinge_g_loss, load_lpips
from vcq.presets import TOKENIZER_PRESETS, TokenizerConfig
from vcq.images import to_tensor, to_uint8
from vcq.tokenizer import Tokenizer1D, load_tokenizer, schedule_of
from vcq.train import save_weights

SMALL = TokenizerConfig(image_size=8, patch_size=4, num_latent=6, enc_width=16, enc_depth=1, enc_heads=2,
                        dec_width=16, dec_depth=1, dec_heads=2, code_dim=4, kmax=32)


def test_shapes_and_tokens_below_K_t():
    torch.manual_seed(0)
    m = Tokenizer1D(SMALL)
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    out = m(x)
    assert out.recon.shape == x.shape
    tok = m.encode(x)
    K = torch.as_tensor(schedule_of(SMALL).K)
    assert tok.shape == (5, 6) and (tok < K).all() and (tok >= 0).all()
    assert torch.equal(tok, out.quant.indices)
    torch.testing.assert_close(m.decode(tok), out.recon)  # forward = decode(encode) in value


def test_gradients_reach_encoder_codebook_and_decoder():
    torch.manual_seed(1)
    m = Tokenizer1D(SMALL)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    out = m(x)
    ((out.recon - x).abs().mean() + out.quant.loss).backward()
    for name in ("patch_embed.weight", "latent_tokens", "encoder.blocks.0.attn.qkv.weight", "to_code.weight",
                 "quantizer.codebook", "from_code.weight", "mask_token", "to_pixels.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_wrong_image_shape_is_refused():
    m = Tokenizer1D(SMALL)
    with pytest.raises(EntropyCliffError, match="do not match"):
        m.encode(torch.zeros(2, 1, 8, 8))
    with pytest.raises(EntropyCliffError, match="do not match"):
        m.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(EntropyCliffError, match="out of range"):
        m.decode(torch.full((1, 6), 31))  # K_1 = 2


def test_paper_presets_match_the_stated_sizes():
    for name, kmax in (("base", 16384), ("large", 11264)):
        c = TOKENIZER_PRESETS[name].model
        assert (c.num_latent, c.schedule, c.kmin, c.kmax) == (256, "cosine", 2, kmax)
        assert (c.w_l1, c.w_lpips, c.w_adv, c.w_disc, c.w_commit) == (1.0, 1.0, 0.1, 1.0, 1.0)
    # ViT-B: 12 blocks of 12 * 768^2 + 13 * 768 parameters (qkv, proj, 2 MLP layers, norms)
    b = TOKENIZER_PRESETS["base"].model
    vit_b = 12 * (12 * 768**2 + 13 * 768)
    with torch.device("meta"):
        m = Tokenizer1D(b)
    enc = sum(p.numel() for p in m.encoder.parameters())
    assert enc == vit_b + 2 * 768
    total = sum(p.numel() for p in m.parameters())
    assert 170e6 < total < 175e6  # paper: 172M


def test_uint8_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = to_tensor(img)
    assert x.shape == (3, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), img)


def test_hinge_losses_follow_their_formulas():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3)
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_patch_discriminator_gives_a_logit_map():
    d = PatchDiscriminator(3, 8, 2)
    out = d(torch.randn(2, 3, 32, 32))
    assert out.shape[:2] == (2, 1) and out.shape[2] > 1


def _lpips_file(tmp_path, drop=None):
    """Random VGG16 + lin weights under the torchvision / lpips key names."""
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LPIPS().state_dict().items()}
    sd = {k: torch.randn(s) * 0.05 for k, s in shapes.items() if k.startswith("features.")}
    for i in range(5):
        sd[f"lin{i}.model.1.weight"] = torch.rand(shapes[f"lins.{i}.weight"])
    if drop:
        sd.pop(drop)
    path = tmp_path / "lpips.pt"
    torch.save(sd, path)
    return path, sd


def test_lpips_loads_local_weights_and_is_a_distance(tmp_path):
    path, sd = _lpips_file(tmp_path)
    m = load_lpips(path)
    assert torch.equal(m.features[28].weight, sd["features.28.weight"])
    assert torch.equal(m.lins[3].weight, sd["lin3.model.1.weight"])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    assert m(x, x).item() == pytest.approx(0.0, abs=1e-6)
    d = m(x, y)
    assert d.item() > 0
    d.backward()
    assert y.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())  # frozen
    with pytest.raises(EntropyCliffError, match="lack"):
        load_lpips(_lpips_file(tmp_path, drop="lin2.model.1.weight")[0])
    with pytest.raises(EntropyCliffError, match="no such"):
        load_lpips(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EntropyCliffError, match="unreadable"):
        load_lpips(tmp_path / "bad.pt")


def _run_dir(tmp_path, cfg=SMALL):
    from vcq.presets import TrainConfig
    from vcq.data import DataSpec
    from vcq.train_tokenizer import run_config

    m = Tokenizer1D(cfg)
    (tmp_path / "config.json").write_text(json.dumps(run_config(cfg, TrainConfig(), DataSpec(), "test")))
    save_weights(tmp_path / "model.safetensors", m, 7)
    return m


def test_load_tokenizer_round_trip_and_bad_checkpoints(tmp_path):
    m = _run_dir(tmp_path)
    loaded = load_tokenizer(tmp_path)
    for (k, a), (_, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(EntropyCliffError, match="missing"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(EntropyCliffError, match="corrupt"):
        load_tokenizer(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _run_dir(other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["kmax"] = 64  # weights for 32 codes, config for 64
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EntropyCliffError, match="do not match"):
        load_tokenizer(other)
    (other / "config.json").write_text("{broken")
    with pytest.raises(EntropyCliffError, match="unreadable"):
        load_tokenizer(other)
