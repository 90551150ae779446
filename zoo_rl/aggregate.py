"""Zoo-Tuning aggregation as pure functions: K source layers, one gate vector, one output.

Shapes (K sources, B samples, O output channels, I input channels):

- conv weights ``(K, O, I, kh, kw)``, linear weights ``(K, O, I)``, biases ``(K, O)``;
- alignment ``(K, O, O)`` or ``None``: source k's layer becomes ``A_k · W_k`` and ``A_k · b_k``
  (A_k mixes the output channels of source k, so its bias is mixed the same way; with
  ``A_k = I`` this is the source layer unchanged);
- gates ``(K,)`` (one gate for the whole batch: ``batch``, ``lite``, ``uniform`` modes) or
  ``(B, K)`` (one per sample: ``sample`` mode).

The output is ``y_b = Σ_k g_bk · layer(x_b; A_k W_k, A_k b_k)``, which is the same as applying
the single aggregated layer ``Σ_k g_bk A_k W_k`` because the layer is linear in its weights.
Every function here has a naive reference in ``tests/test_aggregate.py`` that loops over
samples and builds that aggregated weight explicitly; the fast paths must agree with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def align_weights(weights: torch.Tensor, align: torch.Tensor | None) -> torch.Tensor:
    """``A_k · W_k`` for every source.

    :param weights: ``(K, O, ...)``.
    :param align: ``(K, O, O)`` or ``None`` (identity).
    :return: ``(K, O, ...)``.
    """
    if align is None:
        return weights
    k, o = weights.shape[:2]
    # (K, O, O) @ (K, O, rest) -> (K, O, rest): one matmul per source on the output channels.
    return torch.bmm(align, weights.reshape(k, o, -1)).reshape(weights.shape)


def align_biases(biases: torch.Tensor, align: torch.Tensor | None) -> torch.Tensor:
    """``A_k · b_k``: ``(K, O)`` -> ``(K, O)``."""
    if align is None:
        return biases
    return torch.bmm(align, biases.unsqueeze(-1)).squeeze(-1)


def mix(gates: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum over sources.

    :param gates: ``(K,)`` or ``(B, K)``.
    :param stacked: ``(K, ...)``.
    :return: ``(...)`` for ``(K,)`` gates, ``(B, ...)`` for ``(B, K)`` gates.
    """
    k = stacked.shape[0]
    flat = stacked.reshape(k, -1)
    if gates.dim() == 1:
        return (gates @ flat).reshape(stacked.shape[1:])
    return (gates @ flat).reshape(gates.shape[0], *stacked.shape[1:])


def merge(gates: torch.Tensor, weights: torch.Tensor, align: torch.Tensor | None) -> torch.Tensor:
    """The single aggregated weight ``Σ_k g_k A_k W_k`` for ``(K,)`` gates (a lite layer's deployed weight)."""
    return mix(gates, align_weights(weights, align))


def _check_gates(gates: torch.Tensor, k: int, batch: int) -> None:
    if gates.dim() == 1 and gates.shape[0] == k:
        return
    if gates.dim() == 2 and gates.shape == (batch, k):
        return
    raise ValueError(f"gates must have shape ({k},) or ({batch}, {k}), got {tuple(gates.shape)}.")


def zoo_conv2d(
    x: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor | None,
    gates: torch.Tensor,
    align: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """Convolution with the gate-aggregated kernel of K sources.

    :param x: ``(B, I, H, W)``.
    :param weights: ``(K, O, I, kh, kw)``.
    :param biases: ``(K, O)`` or ``None``.
    :param gates: ``(K,)`` or ``(B, K)``.
    :param align: ``(K, O, O)`` or ``None``.
    :return: ``(B, O, H', W')``.
    """
    k, o = weights.shape[:2]
    b = x.shape[0]
    _check_gates(gates, k, b)
    w = align_weights(weights, align)
    bias = None if biases is None else align_biases(biases, align)
    if gates.dim() == 1:
        # One kernel for the batch: aggregate the (small) conv weights, then one ordinary conv.
        return F.conv2d(x, mix(gates, w), None if bias is None else mix(gates, bias), stride, padding)
    # Per-sample kernels, exactly: build B kernels (B, O, I, kh, kw) -- cheap next to the conv
    # itself -- and run them as one grouped convolution with groups = B:
    # input (1, B*I, H, W), weight (B*O, I, kh, kw) -> output (1, B*O, H', W').
    kernels = mix(gates, w)
    out = F.conv2d(x.reshape(1, b * x.shape[1], *x.shape[2:]), kernels.reshape(b * o, *w.shape[2:]),
                   None, stride, padding, groups=b)
    out = out.reshape(b, o, *out.shape[2:])
    if bias is not None:
        out = out + mix(gates, bias)[:, :, None, None]
    return out


def zoo_linear(
    x: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor | None,
    gates: torch.Tensor,
    align: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear layer with the gate-aggregated weight of K sources.

    :param x: ``(B, I)``.
    :param weights: ``(K, O, I)``.
    :param biases: ``(K, O)`` or ``None``.
    :param gates: ``(K,)`` or ``(B, K)``.
    :param align: ``(K, O, O)`` or ``None``.
    :return: ``(B, O)``.
    """
    k, o, i = weights.shape
    b = x.shape[0]
    _check_gates(gates, k, b)
    if gates.dim() == 1 and not _activation_path_cheaper(b, k, o, i, align is not None):
        w = mix(gates, align_weights(weights, align))
        bias = None if biases is None else mix(gates, align_biases(biases, align))
        return F.linear(x, w, bias)
    # Activation path: every source's output, then align and mix. Costs B·K·O·(I+O) MACs,
    # where merging the aligned weights first costs K·O·O·I: for NatureCNN's 3136->512 layer
    # this path wins below a batch of about 500, so it serves per-sample gates and, with
    # alignment, batch-level gates too.
    # (W (K*O, I) @ x^T (I, B))^T -> (B, K, O): the same products as x @ W^T, in the orientation MKL runs
    # faster for these shapes (benchmarks/bench_extractor.py times the layer).
    per_source = (weights.reshape(k * o, i) @ x.t()).t().reshape(b, k, o)
    if biases is not None:
        per_source = per_source + biases
    if align is not None:
        # (K, B, O) @ A^T (K, O, O) -> (K, B, O): source k's output channels mixed by A_k.
        per_source = torch.bmm(per_source.transpose(0, 1), align.transpose(1, 2)).transpose(0, 1)
    if gates.dim() == 1:
        return torch.einsum("k,bko->bo", gates, per_source)
    return torch.einsum("bk,bko->bo", gates, per_source)


def _activation_path_cheaper(batch: int, k: int, o: int, i: int, aligned: bool) -> bool:
    """Multiply-adds of the two exact routes for batch-level gates (see :func:`zoo_linear`)."""
    if not aligned:
        return False  # merging costs K·O·I, less than one forward of the batch
    return batch * k * o * (i + o) < k * o * o * i + batch * o * i
