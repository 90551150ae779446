"""Fast aggregation paths against a naive per-sample loop that builds Σ_k g_k A_k W_k explicitly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo_rl.aggregate import zoo_conv2d, zoo_linear

K, B = 3, 5


def naive_weight(weights, biases, gates_row, align):
    """Σ_k g_k A_k W_k for one sample, by the definition, source by source."""
    w = torch.zeros_like(weights[0])
    b = torch.zeros_like(biases[0]) if biases is not None else None
    for k in range(weights.shape[0]):
        wk = weights[k]
        bk = biases[k] if biases is not None else None
        if align is not None:
            wk = (align[k] @ wk.reshape(wk.shape[0], -1)).reshape(wk.shape)
            bk = align[k] @ bk if bk is not None else None
        w = w + gates_row[k] * wk
        if b is not None:
            b = b + gates_row[k] * bk
    return w, b


def naive(x, weights, biases, gates, align, conv, stride=1):
    outs = []
    for i in range(x.shape[0]):
        row = gates if gates.dim() == 1 else gates[i]
        w, b = naive_weight(weights, biases, row, align)
        xi = x[i : i + 1]
        outs.append(F.conv2d(xi, w, b, stride) if conv else F.linear(xi, w, b))
    return torch.cat(outs)


def make(conv: bool, per_sample: bool, aligned: bool, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if conv:
        x = torch.randn(B, 4, 12, 12, generator=g)
        weights = torch.randn(K, 6, 4, 3, 3, generator=g)
    else:
        x = torch.randn(B, 7, generator=g)
        weights = torch.randn(K, 6, 7, generator=g)
    biases = torch.randn(K, 6, generator=g) if bias else None
    gates = torch.rand(B, K, generator=g) if per_sample else torch.rand(K, generator=g)
    align = torch.eye(6) + 0.3 * torch.randn(K, 6, 6, generator=g) if aligned else None
    return x, weights, biases, gates, align


@pytest.mark.parametrize("conv", [True, False], ids=["conv", "linear"])
@pytest.mark.parametrize("per_sample", [True, False], ids=["sample-gates", "batch-gates"])
@pytest.mark.parametrize("aligned", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_fast_path_equals_naive_loop(conv, per_sample, aligned, bias):
    x, weights, biases, gates, align = make(conv, per_sample, aligned, bias)
    if conv:
        fast = zoo_conv2d(x, weights, biases, gates, align, stride=2)
        ref = naive(x, weights, biases, gates, align, conv=True, stride=2)
    else:
        fast = zoo_linear(x, weights, biases, gates, align)
        ref = naive(x, weights, biases, gates, align, conv=False)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [2, 2000], ids=["activation-path", "merged-weight-path"])
def test_linear_batch_gates_both_routes(batch):
    """With alignment, batch-level gates use whichever route is cheaper; both are exact."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, generator=g)
    weights, biases = torch.randn(K, 8, 16, generator=g), torch.randn(K, 8, generator=g)
    gates = torch.rand(K, generator=g)
    align = torch.eye(8) + 0.3 * torch.randn(K, 8, 8, generator=g)
    w, b = naive_weight(weights, biases, gates, align)
    torch.testing.assert_close(zoo_linear(x, weights, biases, gates, align), F.linear(x, w, b), rtol=1e-4, atol=1e-4)


def test_gradients_match_naive():
    x, weights, biases, gates, align = make(conv=True, per_sample=True, aligned=True, bias=True)
    params = [t.requires_grad_() for t in (weights, biases, gates, align)]
    zoo_conv2d(x, weights, biases, gates, align).square().sum().backward()
    fast = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    naive(x, weights, biases, gates, align, conv=True).square().sum().backward()
    for a, b in zip(fast, [p.grad for p in params]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_gate_shape_is_a_clear_error():
    x, weights, biases, _, align = make(conv=False, per_sample=False, aligned=False, bias=True)
    with pytest.raises(ValueError, match=r"gates must have shape \(3,\) or \(5, 3\)"):
        zoo_linear(x, weights, biases, torch.rand(4), align)
