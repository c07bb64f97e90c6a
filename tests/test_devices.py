"""Device placement: every module a training task calls moves with the task (CPU-checkable on the
``meta`` device), so nothing is left on the CPU when training runs on a GPU."""

import numpy as np
import torch
from torch import nn

from vcq.ar import ARTransformer
from vcq.losses import LPIPS, PatchDiscriminator
from vcq.presets import ARConfig, TokenizerConfig
from vcq.tokenizer import Tokenizer1D
from vcq.train import task_modules
from vcq.train_ar import ARTask, TokenData
from vcq.train_tokenizer import TokenizerTask

SMALL = TokenizerConfig(image_size=8, patch_size=4, num_latent=6, enc_width=16, enc_depth=1, enc_heads=2,
                        dec_width=16, dec_depth=1, dec_heads=2, code_dim=4, kmax=32, disc_channels=8, disc_layers=1)


def reachable_modules(obj, seen=None):
    """Every nn.Module reachable from ``obj``'s attributes (through dicts, lists and tuples)."""
    seen = {} if seen is None else seen
    if isinstance(obj, nn.Module):
        seen.setdefault(id(obj), obj)
        return seen
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else \
        vars(obj).values() if hasattr(obj, "__dict__") else ()
    for v in values:
        if not isinstance(v, (str, bytes, torch.Tensor)):
            reachable_modules(v, seen)
    return seen


def _tasks():
    tok = TokenizerTask(Tokenizer1D(SMALL), PatchDiscriminator(3, 8, 1), LPIPS())
    cfg = ARConfig(dim=16, depth=1, heads=2, K=(4, 8, 8), num_classes=3)
    ar = ARTask(ARTransformer(cfg), TokenData(np.zeros((4, 3), np.uint8), np.zeros(4, np.int64)))
    return [tok, ar]


def test_every_module_a_task_holds_is_registered_to_move():
    for task in _tasks():
        registered = {id(m) for m in task_modules(task).values()}
        for m in reachable_modules(task).values():
            inside = any(m is sub for r in task_modules(task).values() for sub in r.modules())
            assert id(m) in registered or inside, f"{type(task).__name__} holds an unregistered {type(m).__name__}"


def test_moving_a_task_moves_every_parameter_and_buffer_it_reaches():
    for task in _tasks():
        for m in task_modules(task).values():
            m.to("meta")
        for m in reachable_modules(task).values():
            for name, t in [*m.named_parameters(), *m.named_buffers()]:
                assert t.device.type == "meta", f"{type(m).__name__}.{name} stayed on {t.device}"
