"""1D tokenizer, its losses and checkpoint loading."""

import json

import numpy as np
import pytest
import torch

from entropy_cliff.errors import EntropyCliffError
from vcq.losses import (LPIPS, PACKAGE, PORT, PackageLPIPS, PatchDiscriminator, hinge_d_loss, hinge_g_loss, load_lpips,
                         lpips_status)
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


def _fake_lpips_module():
    """A stand-in for the lpips package (0.1.4) with its VGG LPIPS layout and arithmetic, written from
    its source: ``net.slice1..5`` hold torchvision's ``vgg16().features[a:b]`` under their original
    indices, ``lin<k>.model`` is ``[Dropout, Conv1x1]`` (also reachable as ``lins``), inputs are
    scaled by ``scaling_layer``; per layer: unit-normalise channels, squared difference, lin,
    spatial mean; the sum over layers has shape (N, 1, 1, 1). Like the package with
    ``pnet_rand=False`` it would download VGG weights, so the fake refuses that."""
    import types

    from torch import nn

    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

    class Vgg16(nn.Module):
        def __init__(self, requires_grad=False, pretrained=True):
            super().__init__()
            if pretrained:
                raise RuntimeError("would download torchvision's VGG16 weights")
            feats, c = [], 3
            for v in cfg:
                feats += [nn.MaxPool2d(2, 2)] if v == "M" else [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v if v != "M" else c
            for s, (a, b) in enumerate(((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), 1):
                sl = nn.Sequential()
                for x in range(a, b):
                    sl.add_module(str(x), feats[x])
                setattr(self, f"slice{s}", sl)

        def forward(self, x):
            out = []
            for s in range(1, 6):
                x = getattr(self, f"slice{s}")(x)
                out.append(x)
            return out

    class NetLinLayer(nn.Module):
        def __init__(self, chn_in, use_dropout=True):
            super().__init__()
            self.model = nn.Sequential(*([nn.Dropout()] if use_dropout else []), nn.Conv2d(chn_in, 1, 1, bias=False))

    class ScalingLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("shift", torch.Tensor([-.030, -.088, -.188])[None, :, None, None])
            self.register_buffer("scale", torch.Tensor([.458, .448, .450])[None, :, None, None])

        def forward(self, inp):
            return (inp - self.shift) / self.scale

    class FakeLPIPS(nn.Module):
        def __init__(self, pretrained=True, net="alex", version="0.1", lpips=True, spatial=False, pnet_rand=False,
                     pnet_tune=False, use_dropout=True, model_path=None, eval_mode=True, verbose=True):
            super().__init__()
            assert net == "vgg" and version == "0.1" and lpips and not pretrained  # no package weight files read
            self.scaling_layer = ScalingLayer()
            self.net = Vgg16(requires_grad=pnet_tune, pretrained=not pnet_rand)
            for k, c in enumerate((64, 128, 256, 512, 512)):
                setattr(self, f"lin{k}", NetLinLayer(c, use_dropout))
            self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(5)])

        def forward(self, in0, in1, retPerLayer=False, normalize=False):
            outs0, outs1 = self.net(self.scaling_layer(in0)), self.net(self.scaling_layer(in1))
            val = 0
            for k in range(5):
                f0 = outs0[k] / (torch.sqrt(torch.sum(outs0[k] ** 2, dim=1, keepdim=True)) + 1e-10)
                f1 = outs1[k] / (torch.sqrt(torch.sum(outs1[k] ** 2, dim=1, keepdim=True)) + 1e-10)
                val = val + self.lins[k].model((f0 - f1) ** 2).mean([2, 3], keepdim=True)
            return val

    return types.SimpleNamespace(LPIPS=FakeLPIPS)


def _assert_lpips_parity(path):
    """Port and package from one weights file: equal distances (1e-5) on random image pairs."""
    port, package = load_lpips(path, "port"), load_lpips(path, "package")
    assert (port.implementation, package.implementation) == (PORT, PACKAGE)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    for i in range(len(x)):
        ours, theirs = port(x[i:i + 1], y[i:i + 1]).item(), package(x[i:i + 1], y[i:i + 1]).item()
        assert ours > 1e-3 and theirs == pytest.approx(ours, abs=1e-5)
    assert package(x, y).item() == pytest.approx(port(x, y).item(), abs=1e-5)  # the batch mean


def test_lpips_package_glue_loads_every_weight_from_the_file(tmp_path, monkeypatch):
    """Through a stand-in with the package's layout (the real one needs torchvision): nothing comes
    from the package's own files or a download, every weight from the local file."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips_module())
    assert lpips_status()[0]
    path, sd = _lpips_file(tmp_path)
    m = load_lpips(path)
    assert isinstance(m, PackageLPIPS) and m.implementation == PACKAGE
    assert torch.equal(getattr(m.net.net.slice5, "28").weight, sd["features.28.weight"])
    assert torch.equal(m.net.lins[3].model[1].weight, sd["lin3.model.1.weight"])
    _assert_lpips_parity(path)
    x = torch.rand(2, 1, 16, 16) * 2 - 1  # grey images: channels repeated, as in the port
    y = (torch.rand(2, 1, 16, 16) * 2 - 1).requires_grad_(True)
    assert m(x, y).item() == pytest.approx(load_lpips(path, "port")(x, y).item(), abs=1e-5)
    m(x, y).backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in m.parameters())
    m.train()
    assert not m.training and not m.net.training
    with pytest.raises(EntropyCliffError, match="lack 1 tensors"):
        load_lpips(_lpips_file(tmp_path, drop="features.2.bias")[0])
    with pytest.raises(EntropyCliffError, match="auto, package or port"):
        load_lpips(path, "torchvision")


def test_without_the_package_lpips_falls_back_to_the_port_and_says_why(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    ok, why = lpips_status()
    assert not ok and ("lpips does not import here (ImportError" in why or "torchvision does not import here" in why)
    assert isinstance(load_lpips(_lpips_file(tmp_path)[0]), LPIPS) and load_lpips(_lpips_file(tmp_path)[0]).implementation == PORT


@pytest.mark.skipif(not lpips_status()[0], reason=lpips_status()[1])
def test_lpips_package_and_port_give_equal_distances_with_the_same_weights(tmp_path):
    """Parity with the real lpips package; runs wherever lpips and torchvision import."""
    _assert_lpips_parity(_lpips_file(tmp_path)[0])


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
