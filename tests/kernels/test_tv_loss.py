"""TV loss: the Triton kernels (interpreted on CPU) and the torch twin against plain-autograd references."""

from __future__ import annotations

import importlib

import pytest
import torch

# importlib, not `import bebop.kernels.tv_loss as ...`: the module shares its name with the
# function `tv_loss`, which a package re-export would make the attribute `bebop.kernels.tv_loss`.
tvl = importlib.import_module("bebop.kernels.tv_loss")
from bebop.bench.tv_loss import bench_tv_loss  # noqa: E402
from bebop.kernels.tv_loss import (  # noqa: E402
    ce_loss_reference,
    e2e_tv_loss,
    e2e_tv_loss_reference,
    kl_loss_reference,
    reverse_kl_loss_reference,
    tv_loss,
    tv_loss_reference,
)

BACKENDS = ["torch", "triton"]

# (num_rows, vocab_size, BLOCK_V cap): one padded tile; eight tiles with a partial last one;
# two tiles of the default 4096 with 3 live lanes in the second.
SHAPES = [(3, 37, None), (5, 1000, 128), (2, 4099, None)]

# (dtype, atol) for the loss against the reference, which reads the same (rounded) logits in fp32.
FORWARD_DTYPES = [(torch.float32, 1e-6), (torch.bfloat16, 1e-6), (torch.float16, 1e-6)]


@pytest.fixture
def small_tiles(monkeypatch):
    """Shrink the Triton tile and the torch twin's chunk so small inputs still run several of each."""

    def apply(block_v: int | None, vocab_size: int) -> None:
        if block_v is not None:
            monkeypatch.setattr(tvl, "MAX_BLOCK_V", block_v)
        # two rows per chunk: odd row counts leave a partial last chunk
        monkeypatch.setattr(tvl, "TORCH_CHUNK_ELEMENTS", 2 * vocab_size)

    return apply


def _logits(
    *shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 2.0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def _grad(
    fn, draft: torch.Tensor, target: torch.Tensor, upstream: torch.Tensor | None = None
) -> torch.Tensor:
    draft = draft.detach().requires_grad_(True)
    out = fn(draft, target)
    out.backward(torch.ones_like(out) if upstream is None else upstream.to(out.dtype))
    return draft.grad


# ---------------------------------------------------------------------------------------------
# tv_loss forward and backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "atol"), FORWARD_DTYPES)
@pytest.mark.parametrize(("num_rows", "vocab_size", "block_v"), SHAPES)
def test_tv_loss_forward_matches_reference(small_tiles, num_rows, vocab_size, block_v, dtype, atol):
    small_tiles(block_v, vocab_size)
    draft = _logits(num_rows, vocab_size, dtype=dtype, seed=1)
    target = _logits(num_rows, vocab_size, dtype=dtype, seed=2)
    expected = tv_loss_reference(draft, target)
    fused_triton = tv_loss(draft, target, backend="triton")
    fused_torch = tv_loss(draft, target, backend="torch")
    for got in (fused_triton, fused_torch):
        assert got.shape == (num_rows,) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    torch.testing.assert_close(fused_triton, fused_torch, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tv_loss_auto_on_cpu_is_torch_twin_and_float64_stays_float64(backend):
    draft, target = _logits(3, 37, seed=1), _logits(3, 37, seed=2)
    torch.testing.assert_close(
        tv_loss(draft, target), tv_loss(draft, target, backend="torch"), atol=0, rtol=0
    )
    out = tv_loss(draft.double(), target.double(), backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, tv_loss_reference(draft.double(), target.double()), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("backend", "dtype", "atol"),
    [("torch", torch.float64, 1e-10), ("triton", torch.float64, 1e-10), ("triton", torch.float32, 1e-6)],
)
@pytest.mark.parametrize(("num_rows", "vocab_size", "block_v"), SHAPES[:2])
def test_tv_loss_closed_form_gradient_matches_autograd(
    small_tiles, num_rows, vocab_size, block_v, backend, dtype, atol
):
    small_tiles(block_v, vocab_size)
    draft = _logits(num_rows, vocab_size, dtype=torch.float64, seed=3)
    target = _logits(num_rows, vocab_size, dtype=torch.float64, seed=4)
    upstream = _logits(num_rows, dtype=torch.float64, seed=5)
    expected = _grad(tv_loss_reference, draft, target, upstream)  # float64 autograd through softmax
    got = _grad(lambda z, t: tv_loss(z, t, backend=backend), draft.to(dtype), target.to(dtype), upstream)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tv_loss_gradient_has_draft_dtype(backend):
    draft, target = _logits(3, 37, dtype=torch.bfloat16, seed=6), _logits(3, 37, dtype=torch.bfloat16, seed=7)
    got = _grad(lambda z, t: tv_loss(z, t, backend=backend), draft, target)
    expected = _grad(tv_loss_reference, draft.float(), target.float())
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: a relative error of 2**-8 on gradients bounded by max q <= 1
    torch.testing.assert_close(got.float(), expected, atol=2**-8, rtol=0)


def test_tv_loss_gradcheck_torch_twin():
    draft = _logits(3, 7, dtype=torch.float64, seed=8).requires_grad_(True)
    target = _logits(3, 7, dtype=torch.float64, seed=9)
    assert torch.autograd.gradcheck(lambda z: tv_loss(z, target, backend="torch"), (draft,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tv_loss_handles_minus_inf_logits(backend):
    """Masked vocabulary entries (-inf logits) give p or q = 0 there, and finite gradients."""
    draft, target = _logits(3, 37, seed=10), _logits(3, 37, seed=11)
    draft[0, :5] = float("-inf")
    target[1, 3:40:4] = float("-inf")
    target[2, :33] = float("-inf")  # the first tiles of the row are all -inf
    draft[2, 30:] = float("-inf")
    expected = tv_loss_reference(draft, target)
    got = tv_loss(draft, target, backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    grad = _grad(lambda z, t: tv_loss(z, t, backend=backend), draft, target)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, _grad(tv_loss_reference, draft, target), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tv_loss_non_contiguous_and_empty_inputs(backend):
    wide = _logits(4, 74, seed=12)
    draft, target = wide[:, ::2], _logits(4, 37, seed=13).t().contiguous().t()  # strided views
    assert not draft.is_contiguous() and not target.is_contiguous()
    torch.testing.assert_close(
        tv_loss(draft, target, backend=backend), tv_loss_reference(draft, target), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        _grad(lambda z, t: tv_loss(z, t, backend=backend), draft, target),
        _grad(tv_loss_reference, draft, target),
        atol=1e-6,
        rtol=0,
    )
    empty = torch.empty(0, 37, requires_grad=True)
    out = tv_loss(empty, torch.empty(0, 37), backend=backend)
    assert out.shape == (0,)
    out.sum().backward()
    assert empty.grad.shape == (0, 37)


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_logits_get_no_gradient(backend):
    draft = _logits(2, 3, 11, seed=14).requires_grad_(True)
    target = _logits(2, 3, 11, seed=15).requires_grad_(True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    tv_loss(draft[0], target[0], backend=backend).sum().backward()
    e2e_tv_loss(draft, target, mask, backend=backend).backward()
    assert target.grad is None
    assert draft.grad is not None and draft.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# e2e_tv_loss
# ---------------------------------------------------------------------------------------------

# chain 0 full, chain 1 cut off after two steps, chain 2 with a hole at step 1
CUT_OFF_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 1]])


@pytest.mark.parametrize(("backend", "atol"), [("torch", 1e-12), ("triton", 1e-12)])
def test_e2e_tv_loss_matches_reference(backend, atol):
    draft, target = (
        _logits(3, 4, 23, dtype=torch.float64, seed=16),
        _logits(3, 4, 23, dtype=torch.float64, seed=17),
    )
    for mask in (CUT_OFF_MASK, CUT_OFF_MASK.bool(), CUT_OFF_MASK.double()):
        expected = e2e_tv_loss_reference(draft, target, mask)
        got = e2e_tv_loss(draft, target, mask, backend=backend)
        assert got.shape == () and got.dtype == torch.float64
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    grad = _grad(lambda z, t: e2e_tv_loss(z, t, CUT_OFF_MASK, backend=backend), draft, target)
    expected_grad = _grad(lambda z, t: e2e_tv_loss_reference(z, t, CUT_OFF_MASK), draft, target)
    torch.testing.assert_close(grad, expected_grad, atol=atol, rtol=0)
    # masked steps get no gradient
    assert (grad[~CUT_OFF_MASK.bool()] == 0).all()


def test_e2e_tv_loss_by_hand():
    """Masked steps are absent: factor 1 in every product and no term of their own."""
    draft, target = (
        _logits(3, 4, 9, dtype=torch.float64, seed=18),
        _logits(3, 4, 9, dtype=torch.float64, seed=19),
    )
    a = (1.0 - tv_loss_reference(draft.reshape(12, 9), target.reshape(12, 9))).view(3, 4).tolist()
    terms = [
        a[0][0],
        a[0][0] * a[0][1],
        a[0][0] * a[0][1] * a[0][2],
        a[0][0] * a[0][1] * a[0][2] * a[0][3],
        a[1][0],
        a[1][0] * a[1][1],
        a[2][0],
        a[2][0] * a[2][2],
        a[2][0] * a[2][2] * a[2][3],
    ]
    expected = 1.0 - sum(terms) / len(terms)
    got = e2e_tv_loss(draft, target, CUT_OFF_MASK, backend="torch")
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_e2e_tv_loss_full_mask_is_paper_formula():
    """1 - (1/S) sum_j prod_{i<=j} (1 - TV_i), averaged over chains."""
    B, S, V = 2, 3, 17
    draft, target = (
        _logits(B, S, V, dtype=torch.float64, seed=20),
        _logits(B, S, V, dtype=torch.float64, seed=21),
    )
    tv = tv_loss_reference(draft.reshape(B * S, V), target.reshape(B * S, V)).view(B, S)
    expected = (1.0 - torch.cumprod(1.0 - tv, dim=1).sum(dim=1) / S).mean()
    got = e2e_tv_loss(draft, target, torch.ones(B, S, dtype=torch.bool), backend="torch")
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_e2e_tv_loss_earlier_steps_weigh_more(backend):
    """Identical inputs at every step: dL/da_k = -(1/S) sum_{j=k}^{S-1} a^j, so step 0 weighs most."""
    S, V = 4, 13
    draft = _logits(1, 1, V, dtype=torch.float64, seed=22).expand(1, S, V).contiguous()
    target = _logits(1, 1, V, dtype=torch.float64, seed=23).expand(1, S, V).contiguous()
    grad = _grad(lambda z, t: e2e_tv_loss(z, t, torch.ones(1, S), backend=backend), draft, target)
    norms = grad[0].norm(dim=-1)  # [S]
    assert (norms[:-1] > norms[1:]).all()
    a = 1.0 - tv_loss_reference(draft[0, :1], target[0, :1]).item()
    weights = torch.tensor([sum(a**j for j in range(k, S)) for k in range(S)], dtype=torch.float64)
    torch.testing.assert_close(norms / norms[-1], weights / weights[-1], atol=0, rtol=1e-10)


@pytest.mark.parametrize("fn", [e2e_tv_loss, e2e_tv_loss_reference])
def test_e2e_tv_loss_all_masked_is_zero_with_zero_gradient(fn):
    draft = _logits(2, 3, 7, seed=24).requires_grad_(True)
    target = _logits(2, 3, 7, seed=25)
    loss = fn(draft, target, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert (draft.grad == 0).all()


def test_e2e_tv_loss_gradcheck_torch_twin():
    draft = _logits(2, 3, 5, dtype=torch.float64, seed=26).requires_grad_(True)
    target = _logits(2, 3, 5, dtype=torch.float64, seed=27)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]])
    assert torch.autograd.gradcheck(lambda z: e2e_tv_loss(z, target, mask, backend="torch"), (draft,))


# ---------------------------------------------------------------------------------------------
# Reference losses
# ---------------------------------------------------------------------------------------------


def test_kl_is_ce_minus_entropy_with_the_same_gradient():
    draft, target = _logits(4, 29, dtype=torch.float64, seed=28), _logits(4, 29, dtype=torch.float64, seed=29)
    p = torch.softmax(target, dim=-1)
    entropy = -(p * p.log()).sum(dim=-1)
    torch.testing.assert_close(
        kl_loss_reference(draft, target), ce_loss_reference(draft, target) - entropy, atol=1e-12, rtol=0
    )
    grad_kl = _grad(kl_loss_reference, draft, target)
    grad_ce = _grad(ce_loss_reference, draft, target)
    torch.testing.assert_close(grad_kl, grad_ce, atol=1e-12, rtol=0)
    # and both equal q - p
    torch.testing.assert_close(grad_ce, torch.softmax(draft, dim=-1) - p, atol=1e-12, rtol=0)


def test_tv_is_symmetric_in_unit_interval_zero_on_identical_logits():
    draft, target = _logits(64, 50, seed=30, scale=8.0), _logits(64, 50, seed=31, scale=8.0)
    tv = tv_loss_reference(draft, target)
    assert ((tv >= 0) & (tv <= 1)).all()
    for backend in BACKENDS:
        forward_tv = tv_loss(draft, target, backend=backend)
        torch.testing.assert_close(forward_tv, tv_loss(target, draft, backend=backend), atol=1e-6, rtol=0)
        same = tv_loss(draft, draft, backend=backend)
        torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-6, rtol=0)
    # disjoint supports: TV = 1
    disjoint_draft = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])
    disjoint_target = torch.tensor([[float("-inf"), float("-inf"), 0.0, 0.0]])
    assert tv_loss_reference(disjoint_draft, disjoint_target).item() == 1.0


def test_reverse_kl_is_kl_with_roles_swapped_and_asymmetric():
    draft, target = _logits(4, 29, dtype=torch.float64, seed=32), _logits(4, 29, dtype=torch.float64, seed=33)
    reverse = reverse_kl_loss_reference(draft, target)
    torch.testing.assert_close(reverse, kl_loss_reference(target, draft), atol=1e-12, rtol=0)
    assert (reverse - kl_loss_reference(draft, target)).abs().min() > 1e-3
    assert (reverse >= 0).all()


def test_references_accept_half_inputs_and_promote():
    draft, target = (
        _logits(2, 11, dtype=torch.bfloat16, seed=34),
        _logits(2, 11, dtype=torch.bfloat16, seed=35),
    )
    for fn in (tv_loss_reference, ce_loss_reference, kl_loss_reference, reverse_kl_loss_reference):
        out = fn(draft, target)
        assert out.shape == (2,) and out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Validation and benchmark
# ---------------------------------------------------------------------------------------------

ROW_FNS = [
    lambda z, t: tv_loss(z, t, backend="torch"),
    tv_loss_reference,
    ce_loss_reference,
    kl_loss_reference,
    reverse_kl_loss_reference,
]


@pytest.mark.parametrize("fn", ROW_FNS)
@pytest.mark.parametrize(
    ("draft", "target", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(2, 6), "target_logits"),
        (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), "draft_logits"),
        (torch.zeros(2, 5), torch.zeros(10), "target_logits"),
        (torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5), "draft_logits"),
        (torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.int32), "target_logits"),
        (torch.zeros(2, 0), torch.zeros(2, 0), "vocab_size"),
    ],
)
def test_row_losses_reject_bad_inputs(fn, draft, target, match):
    with pytest.raises(ValueError, match=match):
        fn(draft, target)


@pytest.mark.parametrize("fn", [lambda z, t, m: e2e_tv_loss(z, t, m, backend="torch"), e2e_tv_loss_reference])
@pytest.mark.parametrize(
    ("draft", "target", "mask", "match"),
    [
        (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.ones(2, 4), "mask"),
        (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.ones(6), "mask"),
        (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), torch.ones(2, 3, dtype=torch.complex64), "mask"),
        (torch.zeros(6, 5), torch.zeros(6, 5), torch.ones(6), "draft_logits"),
        (torch.zeros(2, 3, 5), torch.zeros(2, 4, 5), torch.ones(2, 3), "target_logits"),
        (torch.zeros(2, 3, 5, dtype=torch.int64), torch.zeros(2, 3, 5), torch.ones(2, 3), "draft_logits"),
    ],
)
def test_e2e_losses_reject_bad_inputs(fn, draft, target, mask, match):
    with pytest.raises(ValueError, match=match):
        fn(draft, target, mask)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        tv_loss(torch.zeros(2, 5), torch.zeros(2, 5), backend="cuda")


def test_bench_tv_loss_on_cpu_reports_timings():
    result = bench_tv_loss(n=4, vocab=64, device="cpu", repeats=2)
    assert set(result) == {
        "n",
        "vocab",
        "device",
        "fused_ms",
        "reference_ms",
        "speedup",
        "fused_peak_mb",
        "reference_peak_mb",
    }
    assert result["n"] == 4 and result["vocab"] == 64 and result["device"] == "cpu"
    assert result["fused_ms"] > 0 and result["reference_ms"] > 0 and result["speedup"] > 0
    assert result["fused_peak_mb"] is None and result["reference_peak_mb"] is None
