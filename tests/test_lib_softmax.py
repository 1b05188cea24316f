"""tantra_lib.softmax against F.softmax / F.log_softmax, plus the edge cases issue 3 lists."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tantra_lib import log_softmax, masked_softmax, softmax

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
SHAPES_DIMS = [((7,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4, 9), -1), ((2, 3, 4, 9), 1), ((1, 1), -1)]


def randn(*shape, device, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
def test_softmax_and_log_softmax_match_torch(device, dtype, shape, dim):
    x = randn(*shape, device=device, dtype=dtype, seed=len(shape))
    before = x.clone()
    p = softmax(x, dim=dim)
    torch.testing.assert_close(p, F.softmax(x, dim=dim), **TOL[dtype])
    torch.testing.assert_close(log_softmax(x, dim=dim), F.log_softmax(x, dim=dim), **TOL[dtype])
    assert p.dtype == dtype and p.device == x.device and p.shape == x.shape
    torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)), **TOL[dtype])
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # inputs untouched


def test_default_dim_is_last(device):
    x = randn(4, 6, device=device)
    torch.testing.assert_close(softmax(x), F.softmax(x, dim=-1), **TOL[torch.float32])
    torch.testing.assert_close(log_softmax(x), F.log_softmax(x, dim=-1), **TOL[torch.float32])


@pytest.mark.parametrize("big", [1e4, -1e4, 1e30])
def test_huge_logits_stay_finite(device, big):
    x = torch.tensor([[big, 0.0, -big], [big, big, big], [big, big - 1.0, 0.0]], device=device)
    p, lp = softmax(x), log_softmax(x)
    assert torch.isfinite(p).all() and torch.isfinite(lp[x > -1e29]).all()
    torch.testing.assert_close(p, F.softmax(x, dim=-1), **TOL[torch.float32])
    torch.testing.assert_close(lp, F.log_softmax(x, dim=-1), **TOL[torch.float32])


def test_non_contiguous_input(device):
    x = randn(6, 8, 5, device=device).transpose(0, 2)[:, ::2]  # (5, 4, 6), strided
    assert not x.is_contiguous()
    for dim in (0, 1, 2):
        torch.testing.assert_close(softmax(x, dim), F.softmax(x, dim), **TOL[torch.float32])
        torch.testing.assert_close(log_softmax(x, dim), F.log_softmax(x, dim), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype):
    x = randn(3, 4, 50, device=device, dtype=dtype)
    ref = F.softmax(x.float(), dim=-1)
    p = softmax(x)
    assert p.dtype == dtype
    torch.testing.assert_close(p.float(), ref, rtol=1e-2, atol=1e-2)
    lp = log_softmax(x)
    assert lp.dtype == dtype
    torch.testing.assert_close(lp.float(), F.log_softmax(x.float(), dim=-1), rtol=2e-2, atol=5e-2)
    m = torch.arange(50, device=device) % 3 != 0
    mp = masked_softmax(x, m)
    assert mp.dtype == dtype
    torch.testing.assert_close(mp.float(), _torch_masked(x.float(), m), rtol=1e-2, atol=1e-2)


def _torch_masked(x, mask, dim=-1):
    """PyTorch's own route: -inf where masked, F.softmax, NaN rows (all masked) -> 0."""
    p = F.softmax(x.masked_fill(~mask, float("-inf")), dim=dim)
    return torch.nan_to_num(p, nan=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "x_shape,mask_shape",
    [((4, 6), (4, 6)), ((2, 4, 6), (6,)), ((2, 4, 6), (4, 1)), ((2, 3, 4, 6), (2, 1, 4, 6)), ((1, 1), (1, 1))],
)
def test_masked_softmax_matches_torch_with_broadcast_masks(device, dtype, x_shape, mask_shape):
    x = randn(*x_shape, device=device, dtype=dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(*mask_shape, generator=g) < 0.6).to(device)
    mask[..., 0] = True  # every row keeps something (fully masked rows: next test)
    before = x.clone()
    p = masked_softmax(x, mask)
    torch.testing.assert_close(p, _torch_masked(x, mask), **TOL[dtype])
    assert (p.masked_select(~mask.expand_as(p)) == 0).all(), "masked entries must be exactly 0"
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_masked_softmax_other_dim(device):
    x = randn(5, 3, device=device)
    mask = torch.tensor([[True, False, True]] * 4 + [[False, True, True]], device=device)
    torch.testing.assert_close(masked_softmax(x, mask, dim=0), _torch_masked(x, mask, dim=0), **TOL[torch.float32])


def test_fully_masked_row_gives_zeros_not_nan(device):
    x = randn(3, 5, device=device)
    mask = torch.ones(3, 5, dtype=torch.bool, device=device)
    mask[1] = False
    p = masked_softmax(x, mask)
    assert not torch.isnan(p).any()
    assert (p[1] == 0).all()
    torch.testing.assert_close(p[[0, 2]], F.softmax(x[[0, 2]], dim=-1), **TOL[torch.float32])
    # all masked everywhere, with huge logits too
    huge = torch.full((2, 4), 1e4, device=device)
    assert (masked_softmax(huge, torch.zeros(4, dtype=torch.bool, device=device)) == 0).all()


def test_masked_softmax_with_extreme_logits(device):
    x = torch.tensor([[1e4, -1e4, 0.0, 5.0]], device=device)
    mask = torch.tensor([False, True, True, True], device=device)  # the huge one is masked away
    p = masked_softmax(x, mask)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, _torch_masked(x, mask), **TOL[torch.float32])


def test_masked_softmax_all_true_equals_softmax(device):
    x = randn(3, 7, device=device)
    torch.testing.assert_close(
        masked_softmax(x, torch.ones(7, dtype=torch.bool, device=device)), softmax(x), rtol=0, atol=0
    )


@pytest.mark.parametrize("bad", [torch.ones(3, 5), torch.ones(3, 5, dtype=torch.long), [[True] * 5] * 3])
def test_masked_softmax_rejects_non_bool_masks(device, bad):
    bad = bad.to(device) if isinstance(bad, torch.Tensor) else bad
    with pytest.raises(TypeError, match="bool"):
        masked_softmax(torch.zeros(3, 5, device=device), bad)


def test_in_graph_and_inference_results_agree(device):
    # softmax reuses its temporaries in place when autograd is not recording; both routes must agree.
    x = randn(4, 9, device=device, dtype=torch.float64).requires_grad_()
    mask = torch.arange(9, device=device) % 4 != 1
    with torch.no_grad():
        p0, m0 = softmax(x), masked_softmax(x, mask)
    p1, m1 = softmax(x), masked_softmax(x, mask)
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    torch.testing.assert_close(m0, m1, rtol=0, atol=0)
    (p1.square().sum() + m1.square().sum()).backward()  # no in-place error in the graph
    assert torch.isfinite(x.grad).all()


def test_gradcheck(device):
    x = randn(3, 6, device=device, dtype=torch.float64, scale=1.0).requires_grad_()
    mask = torch.tensor([[True, False, True, True, False, True]] * 2 + [[False] * 6], device=device)
    # second derivatives too: softmax reuses temporaries in place when autograd does not record
    for fn in (softmax, lambda t: softmax(t, dim=0), log_softmax, lambda t: masked_softmax(t, mask)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))
    # and the gradients equal PyTorch's own
    for ours, theirs in ((softmax, F.softmax), (log_softmax, F.log_softmax)):
        w = randn(3, 6, device=device, dtype=torch.float64, seed=5)
        (g1,) = torch.autograd.grad((ours(x, -1) * w).sum(), x)
        (g2,) = torch.autograd.grad((theirs(x, dim=-1) * w).sum(), x)
        torch.testing.assert_close(g1, g2, **TOL[torch.float64])


@pytest.mark.parametrize("bad", [torch.arange(6).reshape(2, 3), torch.ones(2, 3, dtype=torch.bool), [[1.0, 2.0]]])
def test_non_float_inputs_raise_type_error(device, bad):
    bad = bad.to(device) if isinstance(bad, torch.Tensor) else bad
    for fn in (softmax, log_softmax):
        with pytest.raises(TypeError, match="floating-point"):
            fn(bad)
    with pytest.raises(TypeError, match="floating-point"):
        masked_softmax(bad, torch.ones(3, dtype=torch.bool, device=device))
