"""VariableCodebookQuantizer: nested-prefix argmin, plain-VQ equivalence, gradients, restarts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule
from vcq.quantizer import VariableCodebookQuantizer, masked_nearest


def brute_nearest(z: np.ndarray, e: np.ndarray, K: np.ndarray) -> np.ndarray:
    """float64 reference: per (b, t) the argmin over the first K_t codes (lowest index on ties)."""
    d = ((z[:, :, None, :].astype(np.float64) - e[None, None].astype(np.float64)) ** 2).sum(-1)
    d[:, np.arange(e.shape[0])[None, :] >= K[:, None]] = np.inf
    return d.argmin(-1)


def brute_masked_nearest(z: torch.Tensor, e: torch.Tensor, k_rows: torch.Tensor) -> np.ndarray:
    """float64 reference for masked_nearest: row i's argmin over codes k < k_rows[i], lowest index on ties."""
    d = ((z.double().numpy()[:, None, :] - e.double().numpy()[None]) ** 2).sum(-1)
    d[np.arange(e.shape[0])[None, :] >= k_rows.numpy()[:, None]] = np.inf
    return d.argmin(-1)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["constant", "linear", "cosine", "power"]), st.integers(1, 12), st.integers(1, 40),
       st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_nearest_is_masked_argmin(kind, length, kmax, dim, seed):
    torch.manual_seed(seed)
    sched = Schedule(kind, min(2, kmax), kmax, length, 2.5)
    q = VariableCodebookQuantizer(sched.K, dim, chunk_size=5)
    q.codebook.data.normal_()
    z = torch.randn(7, length, dim)
    idx = q.nearest(z).numpy()
    np.testing.assert_array_equal(idx, brute_nearest(z.numpy(), q.codebook.detach().numpy(), sched.K))


@st.composite
def nearest_problems(draw):
    """Latents, codes and prefix sizes with a shared offset of 0, 1e3 or 1e4. ``grid``: small integer
    coordinates, so many codes tie exactly; otherwise Gaussian codes with exact duplicates (ties) and
    latents copied from codes, a code's scale anywhere in 1e-3..10."""
    seed, m, kmax, dim = draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 60)), draw(st.integers(1, 50)), draw(
        st.sampled_from([1, 2, 3, 8, 12, 33]))
    offset, grid = draw(st.sampled_from([0.0, 1e3, 1e4])), draw(st.booleans())
    rng = np.random.default_rng(seed)
    if grid:
        e = rng.integers(-2, 3, (kmax, dim)).astype(np.float64)
        z = rng.integers(-2, 3, (m, dim)) + rng.choice([0.0, 0.5], (m, dim))
    else:
        scale = 10.0 ** rng.uniform(-3, 1)
        e = rng.standard_normal((kmax, dim)) * scale
        dup = rng.integers(0, kmax, kmax // 3)
        e[rng.integers(0, kmax, dup.size)] = e[dup]
        z = rng.standard_normal((m, dim)) * scale
        copied = rng.random(m) < 0.3
        z[copied] = e[rng.integers(0, kmax, copied.sum())]
    k_rows = rng.integers(1, kmax + 1, m)
    return (torch.tensor(z + offset, dtype=torch.float32), torch.tensor(e + offset, dtype=torch.float32),
            torch.from_numpy(k_rows), draw(st.integers(1, 70)))


@settings(max_examples=120, deadline=None)
@given(nearest_problems(), st.booleans())
def test_masked_nearest_equals_float64_brute_force(problem, autocast):
    """Exact at offsets 0 / 1e3 / 1e4, with ties (lowest index), nested masks, any chunking, and under
    bf16 autocast (the CPU stand-in for the GPU path)."""
    z, e, k_rows, chunk = problem
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = masked_nearest(z, e, k_rows, chunk_size=chunk)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), brute_masked_nearest(z, e, k_rows))


@pytest.mark.parametrize("offset", [1e3, 1e4])
@pytest.mark.parametrize("dim", [12, 64])
def test_shared_offset_does_not_change_assignment(offset, dim):
    """The float32 expansion picked the true code for 58 % / 1 % of rows at these offsets."""
    gen = torch.Generator().manual_seed(dim)
    e = torch.randn(512, dim, generator=gen) + offset
    z = torch.randn(1000, dim, generator=gen) + offset
    k_rows = torch.randint(1, 513, (1000,), generator=gen)
    got = masked_nearest(z, e, k_rows, chunk_size=300)
    np.testing.assert_array_equal(got.numpy(), brute_masked_nearest(z, e, k_rows))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_bf16_and_float64_inputs_are_compared_at_their_own_values(dtype):
    gen = torch.Generator().manual_seed(3)
    e = (torch.randn(200, 16, generator=gen, dtype=torch.float64) + 1e3).to(dtype)
    z = (torch.randn(300, 16, generator=gen, dtype=torch.float64) + 1e3).to(dtype)
    k_rows = torch.randint(1, 201, (300,), generator=gen)
    np.testing.assert_array_equal(masked_nearest(z, e, k_rows, 64).numpy(), brute_masked_nearest(z, e, k_rows))


def test_spread_beyond_float32_range_falls_back_to_float64():
    """Distances of ~1e50 overflow the float32 pass; every row is then decided in float64."""
    gen = torch.Generator().manual_seed(4)
    e = torch.randn(40, 5, generator=gen, dtype=torch.float64) * 1e25
    z = torch.randn(50, 5, generator=gen, dtype=torch.float64) * 1e25
    k_rows = torch.randint(1, 41, (50,), generator=gen)
    np.testing.assert_array_equal(masked_nearest(z, e, k_rows, 16).numpy(), brute_masked_nearest(z, e, k_rows))


@pytest.mark.parametrize("mode", ["bf16", "tf32"])
def test_reduced_float32_matmul_precision_stays_exact(mode):
    """With TF32 / bf16 allowed for float32 matmuls the error bound widens to match."""
    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = mode
    try:
        gen = torch.Generator().manual_seed(5)
        e = torch.randn(300, 32, generator=gen) + 1e3
        z = torch.randn(400, 32, generator=gen) + 1e3
        k_rows = torch.randint(1, 301, (400,), generator=gen)
        got = masked_nearest(z, e, k_rows, 128)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    np.testing.assert_array_equal(got.numpy(), brute_masked_nearest(z, e, k_rows))


def test_chunk_size_does_not_change_assignment():
    torch.manual_seed(0)
    z, e = torch.randn(101, 6), torch.randn(50, 6)
    k = torch.randint(1, 51, (101,))
    a = masked_nearest(z, e, k, chunk_size=4096)
    b = masked_nearest(z, e, k, chunk_size=3)
    assert torch.equal(a, b)
    assert (a < k).all()


def test_constant_schedule_is_a_plain_vq_layer():
    """Indices, outputs, losses and gradients equal a standard VQ-VAE layer (full-codebook argmin)."""
    torch.manual_seed(1)
    q = VariableCodebookQuantizer([32] * 5, 4, beta=0.25)
    e = q.codebook.detach().clone().normal_()
    q.codebook.data.copy_(e)
    z = torch.randn(6, 5, 4, requires_grad=True)
    out = q(z)
    (out.z_q.square().sum() + out.loss).backward()

    e_ref = e.clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    idx_ref = torch.cdist(z_ref.reshape(-1, 4), e_ref).argmin(1).view(6, 5)
    codes = e_ref[idx_ref]
    loss_ref = F.mse_loss(codes, z_ref.detach()) + 0.25 * F.mse_loss(z_ref, codes.detach())
    zq_ref = z_ref + (codes - z_ref).detach()
    (zq_ref.square().sum() + loss_ref).backward()

    assert torch.equal(out.indices, idx_ref)
    torch.testing.assert_close(out.z_q, zq_ref)
    torch.testing.assert_close(out.loss, loss_ref)
    torch.testing.assert_close(z.grad, z_ref.grad)
    torch.testing.assert_close(q.codebook.grad, e_ref.grad)


def test_gradients_reach_input_and_used_codes_only():
    torch.manual_seed(2)
    K = Schedule("cosine", 2, 64, 8).K
    q = VariableCodebookQuantizer(K, 3)
    z = torch.randn(4, 8, 3, requires_grad=True)
    out = q(z)
    (out.z_q.sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    used = torch.unique(out.indices)
    g = q.codebook.grad.abs().sum(1)
    assert (g[used] > 0).all()
    mask = torch.ones(64, dtype=torch.bool)
    mask[used] = False
    assert (g[mask] == 0).all()


def test_l2_normalized_codes_lie_on_the_sphere():
    torch.manual_seed(3)
    q = VariableCodebookQuantizer(Schedule("linear", 2, 16, 6).K, 5, l2_norm=True)
    out = q(torch.randn(3, 6, 5) * 7)
    torch.testing.assert_close(out.z_q.norm(dim=-1), torch.ones(3, 6))
    assert (out.indices < torch.as_tensor(Schedule("linear", 2, 16, 6).K)).all()


@pytest.mark.parametrize("l2_norm", [False, True])
def test_autocast_keeps_exact_distances(l2_norm):
    """forward(), nearest() (the path of ``encode()``) under bf16 autocast equal the float64 argmin."""
    torch.manual_seed(4)
    sched = Schedule("cosine", 2, 128, 10)
    q = VariableCodebookQuantizer(sched.K, 8, l2_norm=l2_norm, chunk_size=7)
    q.codebook.data.normal_().add_(1e3)
    z = torch.randn(5, 10, 8) + 1e3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = q(z)
        idx = q.nearest(z)
    assert a.z_q.dtype == torch.float32
    zr, er = (F.normalize(z, dim=-1), q.codes().detach()) if l2_norm else (z, q.codebook.detach())
    ref = brute_nearest(zr.numpy(), er.numpy(), sched.K)
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_array_equal(a.indices.numpy(), ref)


def test_usage_statistics_count_assignments_per_position():
    torch.manual_seed(5)
    K = Schedule("linear", 2, 8, 4).K
    q = VariableCodebookQuantizer(K, 2)
    q.codebook.data.normal_()
    outs = [q(torch.randn(50, 4, 2)).indices for _ in range(3)]
    idx = torch.cat(outs).numpy()
    stats = q.usage_stats()
    for t in range(4):
        counts = np.bincount(idx[:, t], minlength=8)
        p = counts[counts > 0] / counts.sum()
        h = -(p * np.log2(p)).sum()
        assert stats["codes_used"][t] == (counts > 0).sum()
        assert stats["perplexity"][t] == pytest.approx(2**h)
        assert stats["utilization"][t] == pytest.approx(h / np.log2(K[t]))
    q.reset_usage()
    with pytest.raises(EntropyCliffError):
        q.usage_stats()


def test_dead_codes_move_onto_latents_of_positions_allowed_to_use_them():
    torch.manual_seed(6)
    K = np.array([2, 2, 4, 8, 16])
    q = VariableCodebookQuantizer(K, 3, dead_code_restart=True, usage_decay=0.0, dead_code_threshold=0.5)
    q.codebook.data.normal_()
    q.codebook.data[4:] += 100.0  # codes 4.. are far away and never chosen
    z = torch.randn(10, 5, 3)
    out = q(z)
    share = np.bincount(out.indices.reshape(-1).numpy(), minlength=16) / out.indices.numel()
    uniform = np.array([np.mean([(k < kt) / kt for kt in K]) for k in range(16)])
    dead = np.flatnonzero(share < 0.5 * uniform).tolist()
    idx = out.indices.numpy()
    collapsed = sum(len(set(idx[:, t])) == 1 for t in range(5))
    n = q.restart_dead_codes()
    assert n == len(dead) + collapsed and set(range(4, 16)) <= set(dead)
    zs = z.reshape(-1, 5, 3)
    for k in dead:
        vec = q.codebook.data[k]
        hit = (zs == vec).all(-1).nonzero()
        assert len(hit) >= 1
        assert all(K[t] > k for t in hit[:, 1].tolist())  # only positions that may use code k
    assert q.restart_dead_codes() == 0  # nothing pending until the next training batch


def test_a_collapsed_small_prefix_position_is_split_again():
    """Position 1 (K_1 = 2) always takes code 0; the restart moves code 1 onto its farthest latent."""
    torch.manual_seed(7)
    q = VariableCodebookQuantizer([2, 8], 2, dead_code_restart=True, usage_decay=1.0)
    q.codebook.data = torch.tensor([[0.0, 0.0], [50.0, 50.0]] + [[float(i), -1.0] for i in range(6)])
    z = torch.randn(16, 2, 2)
    z[:, 1] += 3.0
    out = q(z)
    assert (out.indices[:, 0] == 0).all()
    assert q.restart_dead_codes() == 1  # no dead codes (decay 1.0 keeps the uniform EMA), one split
    far = int((z[:, 0] ** 2).sum(-1).argmax())
    assert torch.equal(q.codebook.data[1], z[far, 0])
    assert len(q(z).indices[:, 0].unique()) == 2


def test_shape_and_schedule_errors():
    with pytest.raises(EntropyCliffError):
        VariableCodebookQuantizer([0, 3], 2)
    q = VariableCodebookQuantizer([4, 4], 2)
    with pytest.raises(EntropyCliffError):
        q.nearest(torch.randn(3, 3, 2))
