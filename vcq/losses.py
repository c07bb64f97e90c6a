"""Tokenizer losses: perceptual (LPIPS), PatchGAN discriminator and hinge GAN losses.

Total generator objective (paper Appendix A; weights in :class:`vcq.presets.TokenizerConfig`)::

    w_l1 |x - x̂|_1 + w_lpips LPIPS(x, x̂) + w_adv (-mean D(x̂)) + w_commit L_VQ

and the discriminator's hinge loss ``w_disc [mean relu(1 - D(x)) + mean relu(1 + D(x̂))]``; both
adversarial terms are active from ``disc_start`` on.

LPIPS (Zhang et al. 2018, VGG variant): unit-normalise the channels of five VGG16 feature maps of
each image, weight the squared differences per channel with learned non-negative ``lin`` layers,
average over space and sum over layers. Nothing is downloaded: the weights come from one local file
(``.pt``/``.pth`` state dict or ``.safetensors``) holding torchvision-style VGG16 keys
``features.<i>.weight|bias`` and LPIPS keys ``lin<k>.model.1.weight`` (k = 0..4), e.g. made by
merging torchvision's ``vgg16`` weights with the ``lpips`` package's ``weights/v0.1/vgg.pth``.

Two implementations read that file (:func:`load_lpips`): the ``lpips`` package's own network
(:class:`PackageLPIPS`, wherever lpips and torchvision import) and, as the automatic fallback, the
port :class:`LPIPS` here. The returned module's ``implementation`` names the one in use; the two
give the same distances from the same file (parity test in the test suite).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError

# VGG16 "features": conv widths, "M" = max-pool; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices into the features Sequential after which a map is taken
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
PORT = "entropy-cliff port (vcq.losses.LPIPS)"
PACKAGE = "lpips package (LPIPS, net='vgg', version '0.1')"


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(D(x̂))."""
    return -fake_logits.mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN): strided 4×4 convs, one logit per receptive-field patch.

    GroupNorm instead of BatchNorm keeps it independent of batch composition (and of DDP rank).
    """

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, layers + 1):
            c_out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, c_out // 4), c_out),
                     nn.LeakyReLU(0.2)]
            c = c_out
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _vgg16_features() -> nn.Sequential:
    mods: list[nn.Module] = []
    c = 3
    for v in VGG16:
        if v == "M":
            mods.append(nn.MaxPool2d(2, 2))
        else:
            mods += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*mods)


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [-1, 1]; returns the batch mean."""

    implementation = PORT

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        widths = [64, 128, 256, 512, 512]
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                out.append(x)
            if i == LPIPS_TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        total = x.new_zeros(())
        for fx, fy, lin in zip(self._taps(x), self._taps(y), self.lins):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny).pow(2)).mean()
        return total

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always frozen, always eval


def _assign(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, strict: bool = True) -> None:
    try:
        model.load_state_dict(state, strict=strict, assign=True)
    except RuntimeError as e:
        raise EntropyCliffError(f"{path}: LPIPS weights have the wrong shapes ({str(e).splitlines()[1].strip()})") from None


def lpips_status() -> tuple[bool, str]:
    """Whether the ``lpips`` package (and the torchvision it imports) imports here, and why not."""
    from vcq.optional import import_status

    return import_status("torchvision", "lpips")


def _package_key(name: str) -> str | None:
    """The weights-file key of a parameter of the lpips package's VGG LPIPS: ``net.slice<s>.<i>.*``
    keeps torchvision's index ``i`` (-> ``features.<i>.*``); ``lin<k>`` / ``lins.<k>`` -> ``lin<k>``."""
    parts = name.split(".")
    if parts[0] == "net" and parts[1].startswith("slice"):
        return ".".join(["features", *parts[2:]])
    if parts[0] == "lins":
        return ".".join([f"lin{parts[1]}", *parts[2:]])
    if parts[0].startswith("lin"):
        return name
    return None


class PackageLPIPS(nn.Module):
    """The ``lpips`` package's LPIPS (VGG, v0.1) with every weight from a local weights file.

    Built with ``pnet_rand=True`` (so torchvision downloads no VGG) and ``pretrained=False`` (so
    the package loads none of its own files), on the meta device (no random initialisation), then
    every parameter is assigned from the file; the input scaling uses the package's constants.
    Returns the batch mean, like :class:`LPIPS`.
    """

    implementation = PACKAGE

    def __init__(self, state: dict[str, torch.Tensor], path: str | Path = "weights") -> None:
        super().__init__()
        import lpips

        with torch.device("meta"):
            net = lpips.LPIPS(pretrained=False, net="vgg", version="0.1", lpips=True, pnet_rand=True, verbose=False)
        mapped, missing = {}, []
        for name, _ in net.named_parameters():
            key = _package_key(name)
            if key in state:
                mapped[name] = state[key]
            else:
                missing.append(key or name)
        if missing:
            raise EntropyCliffError(f"{path}: LPIPS weights lack {len(missing)} tensors (e.g. {missing[0]})")
        mapped["scaling_layer.shift"] = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
        mapped["scaling_layer.scale"] = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
        _assign(net, mapped, path, strict=False)
        left = [n for n, t in chain(net.named_parameters(), net.named_buffers()) if t.is_meta]
        if left:
            raise EntropyCliffError(f"lpips package: {left[0]} has no weights-file counterpart (unknown package layout)")
        self.net = net.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.net(x, y).mean()

    def train(self, mode: bool = True) -> PackageLPIPS:
        return super().train(False)  # always frozen, always eval


def read_lpips_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local LPIPS weights file (``.pt``/``.pth`` state dict or ``.safetensors``)."""
    p = Path(path)
    if not p.is_file():
        raise EntropyCliffError(f"{p}: no such LPIPS weights file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        return dict(torch.load(p, map_location="cpu", weights_only=True))
    except Exception as e:  # torch / safetensors raise many types for a damaged file
        raise EntropyCliffError(f"{p}: unreadable LPIPS weights ({type(e).__name__})") from None


def load_lpips(path: str | Path, implementation: str = "auto") -> nn.Module:
    """LPIPS with weights from a local file (see the module docstring for the expected keys).

    ``implementation``: ``"package"`` (:class:`PackageLPIPS`), ``"port"`` (:class:`LPIPS`) or
    ``"auto"``: the package wherever it and torchvision import, else the port. The module's
    ``implementation`` attribute names the one returned.
    """
    if implementation not in ("auto", "package", "port"):
        raise EntropyCliffError(f"LPIPS implementation must be auto, package or port, got {implementation!r}")
    state = read_lpips_weights(path)
    if implementation == "package" or (implementation == "auto" and lpips_status()[0]):
        return PackageLPIPS(state, path)
    return port_lpips(state, path)


def port_lpips(sd: dict[str, torch.Tensor], path: str | Path = "weights") -> LPIPS:
    """:class:`LPIPS` with every tensor from the state dict ``sd`` of the weights file ``path``."""
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = LPIPS()
    mapped = {"shift": torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), "scale": torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)}
    for k, v in sd.items():
        if k.startswith("features."):
            mapped[k] = v
        elif k.startswith("lin") and k.endswith(".model.1.weight"):
            mapped[f"lins.{int(k[3])}.weight"] = v
    missing = [k for k in model.state_dict() if k not in mapped]
    if missing:
        raise EntropyCliffError(f"{path}: LPIPS weights lack {len(missing)} tensors (e.g. {missing[0]})")
    _assign(model, {k: mapped[k] for k in model.state_dict()}, path)
    return model.requires_grad_(False).eval()
