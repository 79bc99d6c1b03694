"""dlib.operators: forward operators of inverse problems against closed forms, SciPy's
Gaussian filter and autograd (adjoints), and the measurement model."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from dlib import operators as ops

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


LINEAR = [ops.Downsample(2), ops.Downsample(4), ops.BoxInpaint(2, 1, 4),
          ops.GaussianBlur(1.0), ops.GaussianBlur(0.7, radius=3)]


@pytest.mark.parametrize("A", LINEAR, ids=repr)
def test_adjoint_is_the_transpose_and_agrees_with_autograd(A):
    x = rand(3, 2, 8, 8, seed=1)
    y = rand(*A(x).shape, seed=2)
    lhs = (A(x) * y).sum()
    rhs = (x * A.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * (1 + abs(float(lhs)))
    # A is linear: A^T y is the vector-Jacobian product of A at any point
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((A(xg) * y).sum(), xg)
    assert torch.allclose(g, A.adjoint(y), atol=1e-13)
    assert A.linear


def test_downsample_is_block_averaging():
    x = rand(2, 1, 8, 8)
    y = ops.Downsample(2)(x)
    assert y.shape == (2, 1, 4, 4)
    ref = np.zeros((2, 1, 4, 4))
    xn = x.numpy()
    for i in range(4):
        for j in range(4):
            ref[:, :, i, j] = xn[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((-1, -2))
    assert np.abs(y.numpy() - ref).max() < 1e-14
    # a constant image stays constant; the adjoint times f^2 is nearest upsampling
    assert torch.allclose(ops.Downsample(4)(torch.ones(1, 1, 8, 8, dtype=F64)),
                          torch.ones(1, 1, 2, 2, dtype=F64))
    up = ops.Downsample(2).adjoint(y) * 4
    assert torch.equal(up[..., ::2, ::2], y) and torch.equal(up[..., 1::2, 1::2], y)


def test_box_inpaint_zeroes_exactly_the_box():
    x = rand(2, 1, 8, 8) + 5.0
    A = ops.BoxInpaint(2, 3, 4)
    y = A(x)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 3:7] = True
    assert bool((y[..., inside] == 0).all())
    assert torch.equal(y[..., ~inside], x[..., ~inside])
    assert int(A.mask(x).sum()) == 64 - 16


@pytest.mark.parametrize("sigma, radius", [(1.0, None), (0.6, 2), (1.5, 4)])
def test_gaussian_blur_matches_scipy_with_zero_padding(sigma, radius):
    A = ops.GaussianBlur(sigma, radius)
    x = rand(2, 3, 8, 8, seed=3)
    ref = np.stack([
        np.stack([
            ndimage.gaussian_filter(x[b, c].numpy(), sigma, mode="constant",
                                    cval=0.0, truncate=A.radius / sigma)
            for c in range(3)
        ]) for b in range(2)
    ])
    assert np.abs(A(x).numpy() - ref).max() < 1e-12
    k = A.kernel()
    assert k.shape == (2 * A.radius + 1,) * 2 and abs(float(k.sum()) - 1) < 1e-15
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))


def test_tanh_blur_is_the_composition_and_not_linear():
    A = ops.TanhBlur(gain=2.0, sigma=0.8)
    x = rand(2, 1, 8, 8)
    assert torch.allclose(A(x), torch.tanh(2.0 * ops.GaussianBlur(0.8)(x)), atol=0)
    assert not A.linear
    assert A(x).abs().max() < 1
    with pytest.raises(ValueError, match="linear"):
        A.adjoint(x)


def test_operators_keep_dtype_and_are_differentiable():
    for A in [*LINEAR, ops.TanhBlur()]:
        x = rand(2, 1, 8, 8).float().requires_grad_(True)
        y = A(x)
        assert y.dtype == torch.float32
        y.sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_measure_adds_gaussian_noise_of_the_given_level():
    A = ops.Downsample(2)
    x = rand(4000, 1, 8, 8, seed=5)
    y = ops.measure(A, x, 0.3, torch.Generator().manual_seed(0))
    r = (y - A(x)).flatten()
    # 64,000 draws: the standard error of the std estimate is 0.3 / sqrt(2 n) ~ 8e-4
    assert abs(float(r.std()) - 0.3) < 5 * 0.3 / np.sqrt(2 * r.numel())
    assert abs(float(r.mean())) < 5 * 0.3 / np.sqrt(r.numel())
    assert torch.equal(ops.measure(A, x[:3], 0.0), A(x[:3]))
    again = ops.measure(A, x, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_residual_loss_is_the_gaussian_nll_and_its_gradient():
    A = ops.GaussianBlur(1.0)
    x, y = rand(3, 1, 8, 8, seed=1), rand(3, 1, 8, 8, seed=2)
    loss = ops.residual_loss(A, x, y, 0.5)
    ref = ((y - A(x)) ** 2).flatten(1).sum(1) / (2 * 0.25)
    assert torch.allclose(loss, ref, atol=1e-13)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ops.residual_loss(A, xg, y, 0.5).sum(), xg)
    assert torch.allclose(g, -A.adjoint(y - A(x)) / 0.25, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="factor"):
        ops.Downsample(3)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="x"):
        ops.Downsample(2)(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="x"):
        ops.BoxInpaint(6, 0, 4)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="sigma"):
        ops.GaussianBlur(0.0)
    with pytest.raises(ValueError, match="operator"):
        ops.measure(lambda x: x, torch.zeros(1, 1, 8, 8), 0.1)
    with pytest.raises(ValueError, match="y"):
        ops.residual_loss(ops.Downsample(2), torch.zeros(1, 1, 8, 8),
                          torch.zeros(1, 1, 8, 8), 0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        ops.residual_loss(ops.Downsample(2), torch.zeros(1, 1, 8, 8),
                          torch.zeros(1, 1, 4, 4), 0.0)
