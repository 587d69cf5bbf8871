"""GPTQ by hand against llm-compressor's GPTQ (same codes, same grid, same layer error), and
AWQ's scale search checked against the properties the algorithm guarantees."""

import pytest
import torch

from helpers.awq import naive as awq
from helpers.gptq import library, naive


def _layer(seed: int, out_features=64, in_features=128, n=384):
    torch.manual_seed(seed)
    mix = torch.randn(in_features, in_features) * 0.2 + torch.eye(in_features)
    x = torch.randn(n, in_features) @ mix  # correlated inputs: where GPTQ's feedback helps
    x[:, 5] = 0  # a dead input channel
    x[:, :4] *= 10  # a few outlier channels: where AWQ's scales help
    return torch.randn(out_features, in_features) * 0.05, x


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, 64])
def test_gptq_matches_llmcompressor(act_order, group_size):
    w, x = _layer(act_order + group_size)
    w_before = w.clone()
    h = naive.hessian(x)
    mine = naive.gptq_quantize(w, h, group_size=group_size, act_order=act_order)
    ref = library.gptq_quantize(w, h, group_size=group_size, act_order=act_order)
    assert torch.equal(w, w_before)  # neither twin writes into the caller's weight
    torch.testing.assert_close(mine.scale, ref.scale, rtol=1e-6, atol=0)
    assert torch.equal(mine.zero, ref.zero)
    agree = (mine.codes == ref.codes).float().mean().item()
    assert agree > 0.999, agree  # a rare fp tie may round the other way
    e_mine = naive.layer_rel_error(mine.weight, w, x)
    e_ref = naive.layer_rel_error(ref.weight, w, x)
    assert abs(e_mine - e_ref) <= 1e-3 * e_ref
    assert e_mine < 0.9 * naive.layer_rel_error(naive.rtn_quantize(w, 4, group_size), w, x)


def test_gptq_result_is_on_the_grid():
    w, x = _layer(1)
    res = naive.gptq_quantize(w, naive.hessian(x))
    g = torch.arange(w.shape[1]) // 32
    values = res.scale[:, g] * (res.codes.float() - res.zero[:, g])
    torch.testing.assert_close(res.weight, values, rtol=0, atol=1e-6)
    assert int(res.codes.max()) <= 15
    assert (res.weight[:, 5] == 0).all()  # a dead input's weight is dropped


@pytest.mark.parametrize("group_size", [32, 64])
def test_rtn_is_gptq_without_error_feedback(group_size):
    # Chapter 06's RTN row is the baseline GPTQ must beat, so it must be GPTQ's own grid with
    # nothing pushed onto later columns. Uncorrelated inputs (a diagonal Hessian) make GPTQ's
    # Cholesky factor diagonal: no feedback, and GPTQ reduces to RTN on the same grid.
    w, _ = _layer(4)
    h = torch.diag(torch.rand(w.shape[1]) + 0.5)  # (in, in), diagonal
    gptq = naive.gptq_quantize(w, h, group_size=group_size)
    rtn = naive.rtn_quantize(w, 4, group_size)
    torch.testing.assert_close(rtn, gptq.weight, rtol=0, atol=1e-6)
    g = torch.arange(w.shape[1]) // group_size
    torch.testing.assert_close(
        rtn, gptq.scale[:, g] * (gptq.codes.float() - gptq.zero[:, g]), rtol=0, atol=1e-6
    )
    # with correlated inputs the feedback moves weights: the two are no longer the same
    assert not torch.allclose(
        naive.gptq_quantize(w, naive.hessian(_layer(4)[1])).weight, naive.rtn_quantize(w)
    )


def test_gptq_one_column_update_by_hand():
    # The first column is rounded; the second absorbs its error through U[0, 1] / U[0, 0].
    w, x = _layer(2, out_features=4, in_features=32, n=64)
    h = naive.hessian(x)
    u = naive._inverse_cholesky(h, 0.01)
    scale, zero = naive.minmax_grid(w, 4, 32)
    _, q0 = naive.quantize_column(w[:, 0], scale[:, 0], zero[:, 0], 4)
    moved = w[:, 1] - (w[:, 0] - q0) / u[0, 0] * u[0, 1]
    _, q1 = naive.quantize_column(moved, scale[:, 0], zero[:, 0], 4)
    res = naive.gptq_quantize(w, h)
    torch.testing.assert_close(res.weight[:, :2], torch.stack([q0, q1], 1))


@pytest.mark.parametrize("module", [naive, library])
def test_gptq_bad_input(module):
    w, x = _layer(3)
    with pytest.raises(ValueError, match="h must be"):
        module.gptq_quantize(w, torch.eye(5))
    with pytest.raises(ValueError, match="group_size 48"):
        module.gptq_quantize(w, naive.hessian(x), group_size=48)


@pytest.mark.parametrize("duo_scaling", [False, True])
def test_awq_never_worse_than_rtn_on_calibration(duo_scaling):
    w, x = _layer(4)
    res = awq.awq_quantize(w, x, duo_scaling=duo_scaling)
    rtn_err = ((x @ naive.rtn_quantize(w).T - x @ w.T) ** 2).mean().item()
    if not duo_scaling:  # ratio 0 gives s = 1: plain round-to-nearest is on the grid
        assert res.errors[0] == pytest.approx(rtn_err, rel=1e-6)
    assert min(res.errors) <= res.errors[0]
    assert awq.layer_rel_error(res.weight, w, x) < naive.layer_rel_error(
        naive.rtn_quantize(w), w, x
    )
    assert res.ratio > 0  # outlier channels: a non-trivial scale wins
    s = res.scales
    assert s.shape == (w.shape[1],)
    assert (s.max() * s.min()).item() == pytest.approx(1.0, rel=1e-4)


def test_awq_effective_weight_is_grid_over_scales():
    w, x = _layer(5)
    res = awq.awq_quantize(w, x, n_grid=5)
    torch.testing.assert_close(res.weight * res.scales, naive.rtn_quantize(w * res.scales))


def test_awq_bad_input():
    w, x = _layer(6)
    with pytest.raises(ValueError, match="n_grid"):
        awq.awq_quantize(w, x, n_grid=1)
    with pytest.raises(ValueError, match="features"):
        awq.awq_quantize(w, x[:, :64])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("module", [naive, library])
def test_gptq_on_cuda_equals_gptq_on_the_cpu(module):
    """Chapters 06 and 07 quantize on the GPU on the GPU profiles: the same codes as on the CPU."""
    w, x = _layer(7)
    h = naive.hessian(x)
    cpu = module.gptq_quantize(w, h, group_size=32)
    gpu = module.gptq_quantize(w.cuda(), h.cuda(), group_size=32)
    assert (gpu.codes.cpu() == cpu.codes).float().mean() > 0.999
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, rtol=1e-4, atol=1e-5)
    out = awq.awq_quantize(w.cuda(), x.cuda(), group_size=32)
    assert out.weight.is_cuda and out.ratio == awq.awq_quantize(w, x, group_size=32).ratio
