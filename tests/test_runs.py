"""vcq.runs (resolve / train / load a run), labels beside their dump, output checks, the picture
helpers of vcq.images and vcq plot-metrics."""

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import labels_path, prepare_output, save_tokens
from vcq.cli import main
from vcq.runs import load_run, resolve_config, train_run

K = [2, 4, 8, 8]
SMALL_AR = {"model": {"dim": 16, "depth": 1, "heads": 2}, "train": {"steps": 4, "batch_size": 8, "ckpt_every": 2,
                                                                   "log_every": 1}}


def make_dump(path, n=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    tokens = np.column_stack([rng.integers(0, k, n) for k in K])
    save_tokens(path, tokens, K, {"kind": "custom", "kmin": 2, "kmax": 8, "power": None}, labels=labels)
    return path, labels


def test_labels_are_found_by_the_dump_name_with_the_shared_name_as_fallback(tmp_path):
    p = tmp_path / "train.npy"
    assert labels_path(p) == tmp_path / "train.labels.npy"  # neither exists: the new name
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    assert labels_path(p) == tmp_path / "labels.npy"  # only the old one: fallback
    np.save(tmp_path / "train.labels.npy", np.ones(3, np.int64))
    assert labels_path(p) == tmp_path / "train.labels.npy"  # the dump's own labels win


def test_train_ar_reads_the_labels_named_after_the_dump(tmp_path):
    tok, labels = make_dump(tmp_path / "a.npy")
    shutil.move(labels_path(tok), tmp_path / "a.labels.npy")  # the NAME.labels.npy layout
    np.save(tmp_path / "labels.npy", np.full(64, 99))  # a stale shared file must not be used
    cfg = resolve_config("ar", overrides=SMALL_AR, data={"tokens": str(tok)})
    assert cfg["data"]["labels"] == str(tmp_path / "a.labels.npy") and cfg["model"]["num_classes"] == 3
    assert cfg["data"]["val_fraction"] == 0.1  # the one default (vcq.data.VAL_FRACTION)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_a_validation_fraction_outside_0_1_is_refused_for_both_tasks_and_both_splitters(tmp_path, bad):
    from vcq.data import split_indices
    from vcq.train_ar import split_rows

    tok, _ = make_dump(tmp_path / "d.npy")
    msg = rf"val_fraction must lie in \[0, 1\), got {bad}"
    with pytest.raises(EntropyCliffError, match=msg):
        resolve_config("ar", overrides=SMALL_AR, data={"tokens": str(tok), "val_fraction": bad})
    with pytest.raises(EntropyCliffError, match=msg):
        resolve_config("tokenizer", overrides={"data": {"val_fraction": bad}})
    with pytest.raises(EntropyCliffError, match=msg):
        split_indices(10, "train", 0, bad)
    with pytest.raises(EntropyCliffError, match=msg):
        split_rows(10, bad, 0)
    assert len(split_rows(10, 0.0, 0)[1]) == 0 and len(split_indices(10, "val", 0, 0.5)) == 5


def test_a_new_ar_run_reads_its_token_dump_once(tmp_path, monkeypatch):
    import vcq.train_ar

    tok, _ = make_dump(tmp_path / "d.npy")
    read = []
    load = vcq.train_ar.load_token_dump
    monkeypatch.setattr(vcq.train_ar, "load_token_dump", lambda *a: read.append(a[0]) or load(*a))
    train_run("ar", tmp_path / "run", overrides=SMALL_AR, data={"tokens": str(tok)}, stop_at=2, quiet=True)
    assert read == [str(tok)]  # sized the model and then trained on the same rows
    read.clear()
    assert train_run("ar", tmp_path / "run", resume=True, quiet=True).result.step == 4
    assert read == [str(tok)]  # a resume reads it from the saved config


def test_train_run_then_load_run_for_an_ar_model(tmp_path):
    tok, _ = make_dump(tmp_path / "d.npy")
    out = train_run("ar", tmp_path / "run", overrides=SMALL_AR, data={"tokens": str(tok)}, quiet=True)
    assert out.result.step == 4 and out.nll["step"] == 4
    run = load_run(tmp_path / "run")
    assert run.task == "ar" and run.step == 4 and run.model.cfg.K == tuple(K) and not run.model.training
    assert run.data.tokens == str(tok) and run.data.val_fraction == 0.1
    with pytest.raises(EntropyCliffError, match="is a ar run, not a tokenizer run"):
        load_run(tmp_path / "run", task="tokenizer")
    with pytest.raises(EntropyCliffError, match="not a run directory"):
        load_run(tmp_path)
    # resume: the saved config, and a change that matters is refused naming the field
    with pytest.raises(EntropyCliffError, match="train.lr: 0.001 -> 0.5"):
        train_run("ar", tmp_path / "run", overrides={"train": {"lr": 0.5}}, resume=True, quiet=True)
    with pytest.raises(EntropyCliffError, match="lr must be > 0, got -1"):
        resolve_config("ar", overrides={"train": {"lr": -1}}, data={"tokens": str(tok)})
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_bits_per_token" in r for r in rows)  # validation NLL at every logged step


def test_load_run_reads_a_run_written_by_the_previous_layout(tmp_path):
    """Run directories trained before this change: data dict without defaults, labels.npy beside."""
    tok, _ = make_dump(tmp_path / "tokens.npy")
    (tmp_path / "tokens.labels.npy").rename(tmp_path / "labels.npy")  # where the previous layout kept them
    train_run("ar", tmp_path / "run", overrides=SMALL_AR, data={"tokens": str(tok)}, quiet=True)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["data"] = {"val_fraction": 0.05, "tokens": str(tok), "labels": str(tmp_path / "labels.npy")}
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    run = load_run(tmp_path / "run")
    assert run.data.val_fraction == 0.05 and run.data.labels == str(tmp_path / "labels.npy")
    dump, tr, va = run.data.load(run.config["train"]["seed"])
    assert len(tr) + len(va) == 64 and len(va) == 3


def test_prepare_output_creates_parents_and_names_an_unwritable_path(tmp_path):
    assert prepare_output(tmp_path / "a" / "b" / "x.json", "file") == tmp_path / "a" / "b" / "x.json"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # probe removed
    (tmp_path / "f").write_text("")
    with pytest.raises(EntropyCliffError, match="f: exists and is not a directory"):
        prepare_output(tmp_path / "f", "dir")
    with pytest.raises(EntropyCliffError, match="cannot write here"):
        prepare_output(tmp_path / "f" / "sub" / "x.npy", "file")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(EntropyCliffError, match="ro: cannot write here"):
            prepare_output(ro, "dir")


def test_cli_refuses_an_unwritable_output_before_training(tmp_path):
    tok, _ = make_dump(tmp_path / "d.npy")
    (tmp_path / "file").write_text("")
    r = CliRunner().invoke(main, ["train-ar", "--tokens", str(tok), "--out", str(tmp_path / "file" / "run")])
    assert r.exit_code == 2 and "cannot write here" in r.output and len(r.output.strip().splitlines()) == 1


def test_image_grid_upscales_small_images_and_captions_cells():
    from vcq.images import image_grid, rows_grid

    imgs = np.zeros((5, 8, 8, 1), np.uint8)
    plain = image_grid(imgs, cols=3, pad=2)
    assert plain.shape == (2 * (96 + 2) + 2, 3 * (96 + 2) + 2, 3)
    assert (plain[2:98, 2:98] == 0).all() and (plain[0:2] == 255).all()
    cap = image_grid(imgs + 255, cols=5, captions=[f"class {i}" for i in range(5)])
    assert cap.shape[0] == 12 + 96 + 4 and (cap[:12, :100] < 128).any()
    big = image_grid(np.zeros((1, 128, 128, 3), np.uint8))
    assert big.shape == (132, 132, 3)  # already large: not upscaled
    both = rows_grid([("original", imgs[:2]), ("reconstruction", imgs[:2])])
    assert both.shape[1] == 2 * 98 + 2
    with pytest.raises(ValueError, match="2 captions for 5 images"):
        image_grid(imgs, captions=["a", "b"])


def test_plot_metrics_draws_the_training_and_validation_curves(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "lr": 1e-3, "loss": 3.0 / s, "train_bits_per_token": 4.0 / s, "val_bits_per_token": 4.5 / s}
            for s in range(1, 11)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11, "lo')
    r = CliRunner().invoke(main, ["plot-metrics", str(run), "--out", str(tmp_path / "curves.png")])
    assert r.exit_code == 0, r.output
    from PIL import Image

    img = Image.open(tmp_path / "curves.png")
    assert img.size[0] > 3 * img.size[1]  # three panels side by side: loss, bits_per_token, lr
    r = CliRunner().invoke(main, ["plot-metrics", str(tmp_path)])
    assert r.exit_code == 2 and "no metrics.jsonl" in r.output


def test_train_ar_on_a_sharded_dump_uses_the_shards_labels(tmp_path):
    from entropy_cliff.io import write_json_atomic

    tok, labels = make_dump(tmp_path / "flat.npy", n=64)
    tokens = np.load(tok)
    d = tmp_path / "sharded"
    d.mkdir()
    for i, rows in enumerate((slice(0, 40), slice(40, 64))):
        np.save(d / f"shard-{i:05d}.npy", tokens[rows].astype(np.uint8))
        np.save(d / f"shard-{i:05d}.labels.npy", labels[rows])
    write_json_atomic(d / "meta.json", {"N": 64, "L": len(K), "K": K,
                                        "schedule": {"kind": "custom", "kmin": 2, "kmax": 8, "power": None}})
    cfg = resolve_config("ar", overrides=SMALL_AR, data={"tokens": str(d) + "/"})
    assert cfg["data"].get("labels") is None and cfg["model"]["num_classes"] == 3  # the shards' own labels
    r = CliRunner().invoke(main, ["train-ar", "--tokens", str(d) + "/", "--dim", "16", "--depth", "1", "--heads", "2",
                                  "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "run"), "--quiet",
                                  "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["step"] == 2
    run = load_run(tmp_path / "run")
    assert run.step == 2 and run.data.labels is None and run.model.cfg.num_classes == 3
