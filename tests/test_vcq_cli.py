"""`vcq` command line: train -> dump -> `entropy-cliff measure`, preset overrides, bad input."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from entropy_cliff.io import load_tokens, read_sidecar
from entropy_cliff.schedules import Schedule
from vcq.cli import main

# a tokenizer small enough for a few seconds of CPU: 8×8 images, 6 tokens
SMALL = ["--image-size", "8", "--patch-size", "4", "--num-latent", "6", "--code-dim", "4", "--steps", "4",
         "--batch-size", "8", "--log-every", "2", "--data", "shapes", "--n", "60", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One trained run directory shared by the tests below (cosine, K = 2..32)."""
    out = tmp_path_factory.mktemp("run") / "tok"
    torch.set_num_threads(1)
    r = CliRunner().invoke(main, ["train-tokenizer", "--preset", "tiny", *SMALL, "--schedule", "cosine", "--kmin", "2",
                                  "--kmax", "32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _one_line_error(r):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vcq: error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def test_flags_override_the_preset_and_the_resolved_config_is_saved(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == "tokenizer" and cfg["preset"] == "tiny"
    assert cfg["model"]["kmax"] == 32 and cfg["model"]["num_latent"] == 6 and cfg["model"]["image_size"] == 8
    assert cfg["model"]["enc_width"] == 64  # not given: the preset's value
    assert cfg["train"]["steps"] == 4 and cfg["data"] == {"name": "shapes", "path": None, "labels_path": None,
                                                          "n": 60, "seed": 0, "val_fraction": 0.1}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]


def test_dump_then_measure_round_trip(run, tmp_path):
    from entropy_cliff.cli import cli as ec

    out = tmp_path / "tokens.npy"
    r = CliRunner().invoke(main, ["dump-tokens", "--ckpt", str(run), "--split", "train", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    tokens = load_tokens(out)
    meta = read_sidecar(out)
    K = Schedule("cosine", 2, 32, 6).K
    assert tokens.shape == (54, 6) and tokens.dtype == np.uint8  # 90 % of 60 shapes
    assert meta["K"] == K.tolist() and meta["schedule"]["kind"] == "cosine" and meta["source"]["step"] == 4
    assert (tokens < K[None, :]).all()
    labels = np.load(out.with_name(out.stem + ".labels.npy"))
    assert labels.shape == (54,) and labels.max() < 6
    m = CliRunner().invoke(ec, ["measure", str(out), "--format", "json"])
    assert m.exit_code == 0, m.output
    res = json.loads(m.output)
    assert res["N"] == 54 and res["L"] == 6
    assert [p["K"] for p in res["positions"]] == K.tolist()
    # the measured prefix entropy matches a direct count
    _, counts = np.unique(np.asarray(tokens[:, :3]), axis=0, return_counts=True)
    p = counts / counts.sum()
    assert res["positions"][2]["H_prefix"] == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-9)
    # the same images tokenized by the library give the same tokens
    from vcq.data import DataSpec
    from vcq.tokenizer import load_tokenizer, tokenize_images

    model = load_tokenizer(run)
    imgs = DataSpec("shapes", n=60).load("train", model.cfg, augment=False)
    np.testing.assert_array_equal(tokenize_images(model, imgs), tokens)


def test_resume_continues_to_the_same_weights(run, tmp_path):
    out = tmp_path / "split"
    args = ["train-tokenizer", "--preset", "tiny", *SMALL, "--schedule", "cosine", "--kmin", "2", "--kmax", "32"]
    r = CliRunner().invoke(main, [*args, "--out", str(out), "--stop-at", "2"])
    assert r.exit_code == 0, r.output
    with open(out / "metrics.jsonl", "a") as f:  # an interruption mid-write leaves half a row
        f.write('{"step": 3, "lo')
    r = CliRunner().invoke(main, ["train-tokenizer", "--out", str(out), "--resume", "--quiet"])
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    a, b = load_file(str(run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_drops_metrics_of_a_run_that_never_checkpointed(tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n')
    r = CliRunner().invoke(main, ["train-tokenizer", "--preset", "tiny", *SMALL, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(row["loss"] != 99.0 for row in rows) and len({row["step"] for row in rows}) == len(rows)


def test_bad_input_is_one_line_and_exit_2(run, tmp_path):
    cli = CliRunner()
    base = ["train-tokenizer", *SMALL, "--out", str(tmp_path / "x")]
    assert "K_min = 300 exceeds K_max = 256" in _one_line_error(cli.invoke(main, [*base, "--kmin", "300"]))
    assert "unknown tokenizer preset 'huge'" in _one_line_error(cli.invoke(main, [*base, "--preset", "huge"]))
    assert "lr must be > 0, got 0.0" in _one_line_error(cli.invoke(main, [*base, "--lr", "0"]))
    assert "already holds a run" in _one_line_error(cli.invoke(main, ["train-tokenizer", *SMALL, "--out", str(run)]))
    msg = _one_line_error(cli.invoke(main, ["train-tokenizer", "--out", str(run), "--resume", "--schedule", "linear"]))
    assert "model.schedule: 'cosine' -> 'linear'" in msg
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert "no images" in _one_line_error(cli.invoke(main, [*base, "--data", "folder", "--data-path", str(tmp_path / "empty")]))
    np.save(tmp_path / "big.npy", np.zeros((10, 16, 16, 3), np.uint8))
    assert "16×16×3" in _one_line_error(cli.invoke(main, [*base, "--data", "npy", "--data-path", str(tmp_path / "big.npy")]))
    np.save(tmp_path / "gray.npy", np.zeros((10, 8, 8, 1), np.uint8))
    dump = ["dump-tokens", "--ckpt", str(run), "--out", str(tmp_path / "t.npy")]
    assert "8×8×3" in _one_line_error(cli.invoke(main, [*dump, "--data", "npy", "--data-path", str(tmp_path / "gray.npy")]))
    assert "schedule = 'cosine', not 'constant'" in _one_line_error(cli.invoke(main, [*dump, "--schedule", "constant"]))
    assert "kmax = 32, not 64" in _one_line_error(cli.invoke(main, [*dump, "--kmax", "64"]))
    assert "not a run directory" in _one_line_error(cli.invoke(main, ["dump-tokens", "--ckpt", str(tmp_path / "no"),
                                                                      "--out", str(tmp_path / "t.npy")]))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "corrupt" in _one_line_error(cli.invoke(main, ["dump-tokens", "--ckpt", str(broken), "--out", str(tmp_path / "t.npy")]))
    assert not (tmp_path / "t.npy").exists() and not (tmp_path / "t.meta.json").exists()


def test_ctrl_c_is_one_line_exit_130_and_resume_continues_from_the_checkpoint(run, tmp_path, monkeypatch, capsys):
    """Ctrl-C at step 3 (checkpoints every 2 steps): one stderr line naming step 2, exit 130; then
    ``--resume`` runs steps 3 and 4 only and ends on the weights of the uninterrupted run."""
    from safetensors.torch import load_file

    from vcq.train_tokenizer import TokenizerTask

    out = tmp_path / "ctrlc"
    args = ["train-tokenizer", "--preset", "tiny", *SMALL, "--schedule", "cosine", "--kmin", "2", "--kmax", "32",
            "--ckpt-every", "2", "--out", str(out)]
    real_step, seen = TokenizerTask.step, []

    def step(self, models, batch, i):
        seen.append(i)
        if i == 3 and len(seen) == 4:  # the first pass reaches step index 3: Ctrl-C
            raise KeyboardInterrupt
        return real_step(self, models, batch, i)

    monkeypatch.setattr(TokenizerTask, "step", step)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 130
    assert err == f"vcq: interrupted: training stopped at step 3; --resume continues {out} from step 2\n"
    assert seen == [0, 1, 2, 3]
    with pytest.raises(SystemExit) as e:
        main(["train-tokenizer", "--out", str(out), "--resume", "--quiet"])
    assert e.value.code == 0 and seen == [0, 1, 2, 3, 2, 3]
    a, b = load_file(str(run / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]


def test_the_run_names_its_lpips_implementation_and_resumes_with_it(tmp_path):
    """config.json records which LPIPS ran (the lpips package where it imports, else our port) and
    the log says it; the entry does not block --resume."""
    from vcq.losses import LPIPS, PACKAGE, PORT, lpips_status

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LPIPS().state_dict().items()}
    torch.manual_seed(0)
    sd = {k: torch.randn(s) * 0.05 for k, s in shapes.items() if k.startswith("features.")}
    sd.update({f"lin{i}.model.1.weight": torch.rand(shapes[f"lins.{i}.weight"]) for i in range(5)})
    torch.save(sd, tmp_path / "lpips.pt")
    out = tmp_path / "perceptual"
    args = ["train-tokenizer", "--preset", "tiny", *[a for a in SMALL if a != "--quiet"], "--image-size", "16",
            "--w-lpips", "1", "--lpips-path", str(tmp_path / "lpips.pt"), "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--stop-at", "2"])
    assert r.exit_code == 0, r.output
    expected = PACKAGE if lpips_status()[0] else PORT
    assert json.loads((out / "config.json").read_text())["lpips_implementation"] == expected
    assert f"perceptual loss: LPIPS from {tmp_path / 'lpips.pt'} via {expected}" in r.stderr
    assert all(json.loads(ln)["lpips"] > 0 for ln in (out / "metrics.jsonl").read_text().splitlines())
    r = CliRunner().invoke(main, ["train-tokenizer", "--out", str(out), "--resume", "--quiet"])
    assert r.exit_code == 0, r.output
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]
