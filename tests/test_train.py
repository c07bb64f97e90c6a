"""The shared training loop: schedule, data order, weight decay, bit-exact resume, DDP (gloo)."""

import json
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from vcq.data import ImageSet
from vcq.presets import TokenizerConfig, TrainConfig
from vcq.data import DataSpec
from vcq.train_tokenizer import run_config, train_tokenizer
from vcq.train import Task, batch_indices, finish_distributed, frozen, lr_at, param_groups, train

SMALL = TokenizerConfig(image_size=8, patch_size=4, num_latent=6, enc_width=16, enc_depth=1, enc_heads=2,
                        dec_width=16, dec_depth=1, dec_heads=2, code_dim=4, kmax=32, disc_start=2,
                        disc_channels=8, disc_layers=1, dead_code_restart=True, dead_code_threshold=0.5)
TRAIN = TrainConfig(steps=6, batch_size=8, lr=3e-3, min_lr=1e-4, warmup_steps=2, log_every=1, ckpt_every=2,
                    preview_every=3, seed=7)
DATA = DataSpec("shapes", n=48)


def test_lr_warmup_then_linear_decay():
    cfg = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 110)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_batches_partition_each_epoch_across_ranks():
    n, b, world = 50, 4, 3
    per_epoch = n // (b * world)
    for epoch in range(2):
        got = [batch_indices(epoch * per_epoch + j, n, b, world, r, 1) for j in range(per_epoch) for r in range(world)]
        flat = np.concatenate(got)
        assert len(flat) == per_epoch * b * world == len(set(flat.tolist()))
    assert not np.array_equal(batch_indices(0, n, b, world, 0, 1), batch_indices(per_epoch, n, b, world, 0, 1))
    # rank slices of one global batch are the single-process batch of size world * b
    both = np.concatenate([batch_indices(5, n, 4, 2, r, 3) for r in range(2)])
    np.testing.assert_array_equal(both, batch_indices(5, n, 8, 1, 0, 3))
    with pytest.raises(EntropyCliffError, match="smaller than one global batch"):
        batch_indices(0, 10, 8, 2, 0, 0)


def test_weight_decay_skips_biases_norms_and_named_parameters():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    m.register_parameter("codebook", nn.Parameter(torch.zeros(6, 2)))
    decay, keep = param_groups(m, 0.1, ("codebook",))
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert {id(p) for p in keep["params"]} == {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m.codebook)}


def test_frozen_blocks_parameter_gradients_not_input_gradients():
    lin = nn.Linear(2, 1)
    x = torch.randn(3, 2, requires_grad=True)
    with frozen(lin):
        lin(x).sum().backward()
    assert lin.weight.grad is None and x.grad is not None
    assert lin.weight.requires_grad


def _state(run):
    st = torch.load(run / "train_state.pt", weights_only=False)
    return load_file(str(run / "model.safetensors")), st


def _assert_same_run(a, b):
    wa, sa = _state(a)
    wb, sb = _state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert sa["step"] == sb["step"]
    for name in sa["models"]:
        for k, v in sa["models"][name].items():
            assert torch.equal(v, sb["models"][name][k]), (name, k)
    for name in sa["optimizers"]:
        for pid, s in sa["optimizers"][name]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, sb["optimizers"][name]["state"][pid][k]), (name, pid, k)
    rows = [[{k: v for k, v in json.loads(ln).items() if k != "steps_per_s"} for ln in (r / "metrics.jsonl").read_text().splitlines()]
            for r in (a, b)]
    assert rows[0] == rows[1]
    assert [r["step"] for r in rows[0]] == list(range(1, 7))


def test_resume_is_bit_exact(tmp_path):
    """6 steps in one go == 3 steps, stop, resume 3 (GAN, dead-code restarts and flips all active)."""
    cfg = run_config(SMALL, TRAIN, DATA, "test")
    train_tokenizer(cfg, tmp_path / "full", quiet=True)
    res = train_tokenizer(cfg, tmp_path / "split", stop_at=3, quiet=True)
    assert res.step == 3
    train_tokenizer(cfg, tmp_path / "split", resume=True, quiet=True)
    _assert_same_run(tmp_path / "full", tmp_path / "split")
    assert "d_loss" in json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (tmp_path / "full" / "preview_0000006.png").exists()


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path, monkeypatch):
    """A crash at step 5 keeps the step-4 checkpoint; resuming gives the uninterrupted result."""
    cfg = run_config(SMALL, TRAIN, DATA, "test")
    train_tokenizer(cfg, tmp_path / "full", quiet=True)
    calls = {"n": 0}
    original = ImageSet.batch

    def crashing(self, idx, rng):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, idx, rng)

    monkeypatch.setattr(ImageSet, "batch", crashing)
    with pytest.raises(KeyboardInterrupt, match="--resume continues .*crash from step 4"):
        train_tokenizer(cfg, tmp_path / "crash", quiet=True)
    monkeypatch.setattr(ImageSet, "batch", original)
    assert torch.load(tmp_path / "crash" / "train_state.pt", weights_only=False)["step"] == 4
    assert not [p for p in (tmp_path / "crash").iterdir() if p.name.startswith(".")]  # no temporaries
    train_tokenizer(cfg, tmp_path / "crash", resume=True, quiet=True)
    _assert_same_run(tmp_path / "full", tmp_path / "crash")


def test_tokenizer_logs_validation_metrics_with_the_one_psnr(tmp_path):
    cfg = run_config(SMALL, TRAIN, DATA, "test")
    train_tokenizer(cfg, tmp_path, quiet=True)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_l1", "val_psnr", "psnr"} <= set(r) for r in rows)
    # val_psnr is vcq.metrics.mean_psnr of the fixed validation images, recomputed here from the weights
    from vcq.images import to_tensor, to_uint8
    from vcq.metrics import mean_psnr
    from vcq.runs import load_run

    run = load_run(tmp_path)
    assert run.task == "tokenizer" and run.step == 6 and run.data == DATA
    val = DATA.load("val", SMALL, augment=False)
    x = val.images(np.arange(min(64, len(val))))
    with torch.no_grad():
        recon = to_uint8(run.model(to_tensor(x)).recon)
    assert rows[-1]["val_psnr"] == pytest.approx(mean_psnr(x, recon), rel=1e-6)


def test_train_checks_its_config_and_names_fields(tmp_path):
    from dataclasses import replace

    for bad, msg in ((dict(lr=0.0), "lr must be > 0, got 0.0"), (dict(steps=0), "steps must be >= 1, got 0"),
                     (dict(grad_clip=-1.0), "grad_clip must be >= 0"), (dict(warmup_steps=-1), "warmup_steps")):
        with pytest.raises(EntropyCliffError, match=msg):
            train(LinearTask(), ArrayData(), replace(TrainConfig(), **bad), tmp_path, config={}, quiet=True)
    assert not (tmp_path / "config.json").exists()


def test_training_beyond_memory_is_refused_before_any_work(tmp_path, monkeypatch):
    from vcq import resources

    monkeypatch.setattr(resources, "available_bytes", lambda device: 100)
    with pytest.raises(EntropyCliffError, match=r"training \(weights, gradients, AdamW state\) needs about 160 B"):
        train(LinearTask(), ArrayData(), TrainConfig(), tmp_path / "r", config={}, quiet=True)
    assert not (tmp_path / "r").exists()


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    class Interrupting(LinearTask):
        def step(self, models, batch, step):
            if step == 2:
                raise KeyboardInterrupt
            return super().step(models, batch, step)

    cfg = TrainConfig(steps=5, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=100, log_every=1)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 2 before the first checkpoint .*nothing to resume"):
        train(Interrupting(), ArrayData(), cfg, tmp_path, config={"train": cfg.__dict__}, quiet=True)


def test_progress_prints_plain_lines_off_a_terminal_and_nothing_when_quiet(tmp_path, capsys):
    import io

    from entropy_cliff.progress import Progress

    buf = io.StringIO()  # not a tty: plain lines
    with Progress(10, desc="train", unit="step", stream=buf, every_s=0.0) as bar:
        for _ in range(10):
            bar.postfix(loss="0.5")
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("train: step 1/10 (10%), ") and lines[-1].endswith("loss 0.5")
    assert "step 10/10 (100%)" in lines[-1]
    quiet = io.StringIO()
    with Progress(10, stream=quiet, quiet=True, every_s=0.0) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
    cfg = TrainConfig(steps=3, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=100, log_every=1)
    train(LinearTask(), ArrayData(), cfg, tmp_path, config={"train": cfg.__dict__}, log=lambda s: None)
    assert "train: step 3/3 (100%)" in capsys.readouterr().err  # the end line of a non-terminal run


def test_existing_runs_are_not_overwritten_and_resume_checks_the_config(tmp_path):
    cfg = run_config(SMALL, TRAIN, DATA, "test")
    train_tokenizer(cfg, tmp_path, stop_at=1, quiet=True)
    with pytest.raises(EntropyCliffError, match="already holds a run"):
        train_tokenizer(cfg, tmp_path, quiet=True)
    other = run_config(TokenizerConfig(**{**SMALL.__dict__, "schedule": "linear"}), TRAIN, DATA, "test")
    with pytest.raises(EntropyCliffError, match="schedule"):
        train_tokenizer(other, tmp_path, resume=True, quiet=True)
    (tmp_path / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(EntropyCliffError, match="corrupt"):
        train_tokenizer(cfg, tmp_path, resume=True, quiet=True)
    with pytest.raises(EntropyCliffError, match="no config.json"):
        train_tokenizer(cfg, tmp_path / "empty", resume=True, quiet=True)


# ---------------------------------------------------------------------------- DDP on CPU (gloo)

class LinearTask(Task):
    def __init__(self):
        torch.manual_seed(0)
        self.models = {"model": nn.Linear(4, 2)}

    def step(self, models, batch, step):
        return ((models["model"](batch["x"]) - batch["y"]) ** 2).mean(), {}


class ArrayData:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((64, 4)).astype(np.float32)
        self.y = rng.standard_normal((64, 2)).astype(np.float32)

    def __len__(self):
        return 64

    def batch(self, idx, rng):
        return {"x": self.x[idx], "y": self.y[idx]}


class MaskTask(LinearTask):
    """Records the dropout mask of every step."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def step(self, models, batch, step):
        keep = torch.nn.functional.dropout(torch.ones(8, 4), 0.5, training=True) > 0
        self.masks.append(keep)
        return ((models["model"](batch["x"] * keep[:len(batch["x"])]) - batch["y"]) ** 2).mean(), {}


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=5, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=100, log_every=1)
    task = LinearTask()
    train(task, ArrayData(), cfg, out / "linear", config={"train": cfg.__dict__}, quiet=True, log=lambda s: None)
    torch.save(task.models["model"].state_dict(), out / f"linear_rank{rank}.pt")
    tok = TrainConfig(**{**TRAIN.__dict__, "steps": 3, "batch_size": 4})
    train_tokenizer(run_config(SMALL, tok, DATA, "test"), out / "tok", quiet=True)
    masks = MaskTask()
    train(masks, ArrayData(), cfg, out / "masks", config={}, quiet=True)
    torch.save(masks.masks, out / f"masks_rank{rank}.pt")
    from vcq.tokenizer import dump_tokens

    assert dump_tokens(out / "tok", out / "dump.npy", split="all") == out / "dump"
    finish_distributed()  # train() and dump_tokens() keep a group they did not create


def test_ddp_gloo_two_processes_match_one_process_with_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"linear_rank{r}.pt") for r in range(2))
    for k in a:
        assert torch.equal(a[k], b[k])  # ranks stay identical
    cfg = TrainConfig(steps=5, batch_size=8, lr=0.05, warmup_steps=1, ckpt_every=100, log_every=1)
    single = LinearTask()
    train(single, ArrayData(), cfg, tmp_path / "single", config={}, quiet=True)
    for k, v in single.models["model"].state_dict().items():
        torch.testing.assert_close(a[k], v, rtol=1e-5, atol=1e-6)
    st = torch.load(tmp_path / "tok" / "train_state.pt", weights_only=False)
    assert st["world"] == 2 and st["step"] == 3 and len(st["rng"]) == 2
    assert "disc" in st["models"]
    assert not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])  # per-rank RNG states, resumed per rank
    # per-rank randomness: dropout masks differ between the ranks at every step
    m0, m1 = (torch.load(tmp_path / f"masks_rank{r}.pt") for r in range(2))
    assert len(m0) == 5 and all(not torch.equal(a, b) for a, b in zip(m0, m1))
    # the two-process dump: rank r's contiguous slice in shard-0000r, rows equal to one process's dump
    from vcq.tokenizer import dump_tokens
    from entropy_cliff.io import read_sidecar
    from vcq.train_ar import load_token_dump

    one = load_token_dump(dump_tokens(tmp_path / "tok", tmp_path / "one.npy", split="all"))
    shards = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert shards == ["meta.json", "shard-00000.labels.npy", "shard-00000.npy", "shard-00001.labels.npy", "shard-00001.npy"]
    assert [len(np.load(tmp_path / "dump" / f"shard-0000{r}.npy")) for r in range(2)] == [24, 24]
    meta = read_sidecar(tmp_path / "dump")
    assert meta["N"] == 48 and meta["K"] == list(one.K) and meta["source"]["shards"] == 2
    sharded = load_token_dump(tmp_path / "dump")  # what train-ar reads
    np.testing.assert_array_equal(sharded.tokens, one.tokens)
    np.testing.assert_array_equal(sharded.labels, one.labels)


# ---------------------------------------------------------------------------- accumulation, GPU switches

def test_k_micro_batches_equal_one_large_batch(tmp_path):
    from vcq.ar import ARTransformer
    from vcq.presets import ARConfig
    from vcq.train_ar import ARTask, TokenData

    rng = np.random.default_rng(0)
    K = (4, 8, 8, 16)
    data = TokenData(np.column_stack([rng.integers(0, k, 96) for k in K]), rng.integers(0, 3, 96))
    cfg = ARConfig(dim=16, depth=2, heads=2, ffn_multiple_of=16, K=K, num_classes=3, dropout=0.0,
                   token_dropout=0.0, class_dropout=0.0)
    finals = []
    for bs, accum in ((12, 1), (3, 4)):
        torch.manual_seed(0)
        task = ARTask(ARTransformer(cfg))
        tc = TrainConfig(steps=4, batch_size=bs, grad_accum=accum, lr=1e-2, warmup_steps=1, ckpt_every=4,
                         log_every=2, bf16=False, seed=3)
        res = train(task, data, tc, tmp_path / f"r{accum}", config={}, quiet=True)
        grads = {n: p.grad.clone() for n, p in task.model.named_parameters()}  # the last step's gradients
        finals.append(({**task.model.state_dict(), **{"grad." + n: g for n, g in grads.items()}}, res.metrics))
    (a, ma), (b, mb) = finals
    for k in a:  # relative to the tensor's norm: Adam divides near-zero gradients by their own size
        assert (b[k] - a[k]).norm() <= 1e-5 * a[k].norm(), k
    assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-5)  # the logged loss is the step's mean


def test_workers_give_the_same_batches_and_deterministic_mode_is_switched_on_and_off(tmp_path, monkeypatch):
    seen = []

    class Spy(LinearTask):
        def step(self, models, batch, step):
            seen.append((torch.are_deterministic_algorithms_enabled(), batch["x"].sum().item()))
            return super().step(models, batch, step)

    cfg = TrainConfig(steps=3, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=100, log_every=1)
    train(Spy(), ArrayData(), cfg, tmp_path / "a", config={}, quiet=True)
    plain, seen[:] = list(seen), []
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg2 = TrainConfig(**{**cfg.__dict__, "workers": 2, "deterministic": True})
    train(Spy(), ArrayData(), cfg2, tmp_path / "b", config={}, quiet=True)
    assert [x for _, x in seen] == [x for _, x in plain]  # same data order with worker processes
    assert all(on for on, _ in seen) and not any(on for on, _ in plain)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_non_finite_loss_stops_training_before_a_checkpoint(tmp_path):
    class Blowup(LinearTask):
        def step(self, models, batch, step):
            loss, m = super().step(models, batch, step)
            return (loss * float("nan") if step == 1 else loss), m

    cfg = TrainConfig(steps=6, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=3, log_every=3)
    with pytest.raises(EntropyCliffError, match="loss became non-finite between steps 1 and 3"):
        train(Blowup(), ArrayData(), cfg, tmp_path / "n", config={}, quiet=True)
    assert not (tmp_path / "n" / "train_state.pt").exists()


class RankBlowup(LinearTask):
    """A non-finite loss on rank 1 only, in the last step before the check at step 3 (earlier, the
    averaged NaN gradients would make rank 0's next loss non-finite too)."""

    def step(self, models, batch, step):
        loss, m = super().step(models, batch, step)
        return (loss * float("nan") if step == 2 and os.environ["RANK"] == "1" else loss), m


def _nonfinite_worker(rank, world, port, out):
    import vcq.train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    vcq.train.DIST_TIMEOUT_S = 120  # a rank left waiting fails the test in minutes, not hours
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=6, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=3, log_every=3)
    try:
        train(RankBlowup(), ArrayData(), cfg, out / "n", config={}, quiet=True)
    except EntropyCliffError as e:
        (out / f"error{rank}.txt").write_text(str(e))
    finally:
        finish_distributed()


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_nonfinite_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    for r in range(2):
        assert (tmp_path / f"error{r}.txt").read_text().startswith("loss became non-finite between steps 1 and 3")
    assert not (tmp_path / "n" / "train_state.pt").exists()


def test_runs_saved_before_the_new_train_fields_still_resume(tmp_path):
    from vcq.train import check_run_dir
    from vcq.presets import to_dict

    new = run_config(SMALL, TRAIN, DATA, "test")
    old = json.loads(json.dumps(new))
    for k in ("grad_accum", "workers", "deterministic"):
        del old["train"][k]
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_run_dir(tmp_path, new, resume=True)  # no difference
    with pytest.raises(EntropyCliffError, match="grad_accum: 1 -> 2"):
        check_run_dir(tmp_path, {**new, "train": {**to_dict(TRAIN), "grad_accum": 2}}, resume=True)
