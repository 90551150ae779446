"""Zoo-Tuning layers: a bank of K source layers, channel alignment, and the source gate.

A :class:`ZooLayer` holds, for one layer of the network,

- the **bank**: the K source weights and biases, all trainable;
- the **alignment**: one learnable ``O x O`` matrix per source on its output channels,
  identity at start (``align=False`` removes it);
- the **gate**: a small network reading the layer's own input (global average pool ->
  linear ``I -> I/4+1`` -> ReLU -> linear ``-> K``; on a pooled vector a 1x1 convolution is
  a linear layer), whose K scores are normalised into gate values.

Every tensor is a raw ``nn.Parameter`` used through ``F.conv2d`` / ``F.linear``, never an
``nn.Conv2d`` / ``nn.Linear`` module: SB3's ``ortho_init`` re-initialises those modules inside a
features extractor after ``__init__`` and would silently destroy the pretrained bank.

Gate modes (``mode``):

- ``sample``: per-sample gates, as in the paper;
- ``batch``: the gates averaged over the batch, one aggregated layer per batch;
- ``lite``: batch-mean gates plus their exponential moving average ``running_gates``; the
  forward pass always uses the moving average, in training and at inference, so that the
  network that collects rollouts (eval mode) and the one that is trained (train mode) are the
  same network and PPO's first ratio is exactly 1. Gradients still reach the gate network
  through a straight-through term ``ᾱ - stopgrad(ᾱ)`` (zero in value). After each training
  forward the average moves towards the batch mean: ``α̂ <- (1-m) α̂ + m ᾱ``. It starts from
  the first batch's mean (no zero start, no bias correction needed). Because the gates are
  constants at inference, :meth:`ZooLayer.merged` folds the layer into one plain layer; in
  eval mode without gradients, once an optimizer has trained it, the layer does so itself, once
  per parameter update, so rollouts cost one plain layer (a target network, which SB3 updates
  where no version counter sees it, aggregates at every call).
- ``uniform``: fixed gates ``1/K`` (weight averaging, a baseline; no gate network).

Gate normalisation (``normalisation``):

- ``sigmoid`` (default, the paper's): independent sigmoids, unnormalised. K gates at 0.5 sum the
  sources with weight 0.5. NatureCNN has no normalisation layer, so that scale is what the target
  starts from: for K copies of one network it is (K/2) per layer, compounding
  (``tests/test_layers.py``); independently trained sources are not copies, and their weighted sum
  stays nearer their own scale.
- ``softmax``: gates sum to 1 (the usual mixture-of-experts choice). For K copies of one network
  the aggregate is that network, but the *average* of independently trained networks has much
  smaller features than any of them.

``python experiments/feature_scale.py`` measures both scales on a zoo; ``docs/results.md`` has the
numbers and the studies behind sigmoid as the default.
- ``sigmoid-sum``: independent sigmoids divided by their sum (the paper's gate, normalised; the
  same average as softmax at the start).

The gate's last layer starts at zero weights, so the gates start independent of the input; its bias
starts at zero too (equal gates, the paper's start) unless ``init_gates`` asks for other start
values, e.g. most of the weight on one source (:func:`ranked_gates`).

Learning rates: the gate network, the alignments and the bank are tagged with learning-rate
multipliers (``gate_lr``, ``align_lr``, ``bank_lr``), honoured by the optimizers of
:mod:`zoo_rl.optim`. Under Adam a parameter moves by about the learning rate per update whatever
its gradient, so at Adam 1e-4 a gate score moves by at most ~0.16 over 1,560 PPO updates: the
gates need their own, larger rate to choose within such a budget while the bank keeps the
fine-tuning rate.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo_rl.aggregate import align_biases, merge, mix, zoo_conv2d, zoo_linear
from zoo_rl.optim import set_lr_multiplier

GateMode = Literal["sample", "batch", "lite", "uniform"]
Normalisation = Literal["softmax", "sigmoid-sum", "sigmoid"]
GATE_MODES: tuple[str, ...] = ("sample", "batch", "lite", "uniform")
NORMALISATIONS: tuple[str, ...] = ("softmax", "sigmoid-sum", "sigmoid")
#: The gate normalisation of :class:`ZooLayer` and :class:`zoo_rl.ZooExtractor` when none is given.
DEFAULT_NORMALISATION: Normalisation = "sigmoid"
#: Default momentum m of the lite moving average: about the last 100 updates count.
LITE_MOMENTUM = 0.01


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")
    return value


class SourceGate(nn.Module):
    """Gate network of the paper: ``(B, I, ...) -> (B, K)`` gate values.

    :param in_channels: channels I of the layer input (its spatial axes are averaged away).
    :param n_sources: K.
    :param normalisation: ``softmax``, ``sigmoid-sum`` or ``sigmoid``.
    :param init_gates: ``(K,)`` gate values at the start (default: equal scores, i.e. 1/K under
        softmax and sigmoid-sum, 0.5 under sigmoid); see :func:`initial_scores`.
    """

    def __init__(self, in_channels: int, n_sources: int, normalisation: Normalisation = DEFAULT_NORMALISATION,
                 init_gates: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.normalisation = check_choice(normalisation, NORMALISATIONS, "gate normalisation")
        hidden = in_channels // 4 + 1
        bound = 1.0 / math.sqrt(in_channels)  # nn.Linear's default init for the first layer
        self.weight1 = nn.Parameter(torch.empty(hidden, in_channels).uniform_(-bound, bound))
        self.bias1 = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound))
        self.weight2 = nn.Parameter(torch.zeros(n_sources, hidden))  # zero: gates independent of the input
        start = torch.zeros(n_sources) if init_gates is None else initial_scores(init_gates, self.normalisation)
        if start.shape != (n_sources,):
            raise ValueError(f"init_gates must have one value per source ({n_sources}), got {tuple(start.shape)}.")
        self.bias2 = nn.Parameter(start)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(B, K)``; ``x`` is ``(B, I)`` or ``(B, I, *spatial)``."""
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        return F.linear(F.relu(F.linear(pooled, self.weight1, self.bias1)), self.weight2, self.bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(self.scores(x).float(), self.normalisation)  # float32, also under bf16 autocast


def normalise(scores: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """Gate values from scores ``(..., K)`` under ``normalisation``."""
    if normalisation == "softmax":
        return torch.softmax(scores, dim=-1)
    gates = torch.sigmoid(scores)
    if normalisation == "sigmoid-sum":
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return gates


def initial_scores(gates: Sequence[float] | torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """Scores ``(K,)`` whose gate values under ``normalisation`` are ``gates``.

    softmax and sigmoid-sum gates sum to 1, so ``gates`` must too; sigmoid gates are independent,
    each in (0, 1). For sigmoid-sum the sigmoids are set to ``gates / (2 max(gates))`` (the largest
    at 0.5, in the sigmoid's steep part).

    :raises ValueError: values outside (0, 1), or not summing to 1 where the normalisation needs it.
    """
    g = torch.as_tensor(gates, dtype=torch.float64).flatten()
    single = g.numel() == 1 and normalisation != "sigmoid"  # one normalised gate is 1 and stays 1
    if not (single or bool(((g > 0) & (g < 1)).all())):
        raise ValueError(f"init_gates must lie strictly between 0 and 1 (a gate of exactly 0 or 1 cannot move), "
                         f"got {g.tolist()}.")
    if normalisation != "sigmoid" and abs(float(g.sum()) - 1.0) > 1e-6:
        raise ValueError(f"{normalisation} gates sum to 1, but init_gates sum to {float(g.sum()):.6g}: rescale "
                         "them, or use normalisation='sigmoid' for independent gates.")
    if normalisation == "softmax":
        scores = g.log()
        scores = scores - scores.mean()
    elif normalisation == "sigmoid-sum":
        scores = torch.logit(g / (2 * g.max()))
    else:
        scores = torch.logit(g)
    return scores.float()


def ranked_gates(n_sources: int, order: Sequence[int], top: int = 1, weight: float = 0.99) -> list[float]:
    """Start gates that put ``weight`` on the ``top`` best-ranked sources (shared equally) and the rest
    equally on the others: with ``top=1`` the merged network starts within ``1 - weight`` of the
    best-ranked source, and every other source stays open to the gates.

    :param order: source indices, best first (at least ``top`` of them).
    :raises ValueError: ``top`` out of range, or ``weight`` not in (0, 1).
    """
    if not 1 <= top <= n_sources or len(order) < top:
        raise ValueError(f"top must be between 1 and the number of ranked sources, got {top}.")
    if top == n_sources:
        return [1.0 / n_sources] * n_sources
    if not 0.0 < weight < 1.0:
        raise ValueError(f"weight must be in (0, 1), got {weight}.")
    chosen = set(int(i) for i in order[:top])
    rest = (1.0 - weight) / (n_sources - top)
    return [weight / top if k in chosen else rest for k in range(n_sources)]


class ZooLayer(nn.Module):
    """One Zoo-Tuning layer (convolution or linear) with its gate.

    :param weights: ``(K, O, I, kh, kw)`` for a convolution, ``(K, O, I)`` for a linear layer.
    :param biases: ``(K, O)``.
    :param mode: gate mode, see the module docstring.
    :param normalisation: gate normalisation, see the module docstring.
    :param align: learn one ``O x O`` alignment per source (identity at start).
    :param stride: convolution stride (an int or a pair, as ``nn.Conv2d`` takes it).
    :param padding: convolution zero padding (an int or a pair).
    :param gate_channels: channels the gate pools over; for a linear layer fed with an
        unflattened ``(B, C, H, W)`` map this is C (default: the layer's input channels).
    :param lite_momentum: momentum m of the lite moving average.
    :param init_gates: ``(K,)`` gate values at the start (default: equal), see :class:`SourceGate`.
    :param gate_lr: learning-rate multiplier of the gate network (see :mod:`zoo_rl.optim`).
    :param align_lr: learning-rate multiplier of the alignments.
    :param bank_lr: learning-rate multiplier of the bank (weights and biases).
    """

    def __init__(
        self,
        weights: torch.Tensor,
        biases: torch.Tensor,
        mode: GateMode = "lite",
        normalisation: Normalisation = DEFAULT_NORMALISATION,
        align: bool = True,
        stride: int | tuple[int, int] = 1,
        gate_channels: int | None = None,
        lite_momentum: float = LITE_MOMENTUM,
        init_gates: Sequence[float] | torch.Tensor | None = None,
        gate_lr: float = 1.0,
        align_lr: float = 1.0,
        bank_lr: float = 1.0,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        if weights.dim() not in (3, 5):
            raise ValueError(f"weights must be (K, O, I) or (K, O, I, kh, kw), got {tuple(weights.shape)}.")
        if biases.shape != weights.shape[:2]:
            raise ValueError(f"biases must be (K, O) = {tuple(weights.shape[:2])}, got {tuple(biases.shape)}.")
        if not 0.0 < lite_momentum <= 1.0:
            raise ValueError(f"lite_momentum must be in (0, 1], got {lite_momentum}.")
        self.mode = check_choice(mode, GATE_MODES, "gate mode")
        self.is_conv = weights.dim() == 5
        self.stride = stride
        self.padding = padding
        self.lite_momentum = float(lite_momentum)
        k, o, i = weights.shape[:3]
        self.weight = nn.Parameter(weights.detach().clone().float())
        self.bias = nn.Parameter(biases.detach().clone().float())
        self.align = nn.Parameter(torch.eye(o).repeat(k, 1, 1)) if align else None
        if mode == "uniform" and init_gates is not None:
            raise ValueError("A uniform layer has fixed gates 1/K: init_gates needs a gated mode (lite, batch, sample).")
        self.gate = None if mode == "uniform" else SourceGate(gate_channels or i, k, normalisation, init_gates)
        set_lr_multiplier([self.weight, self.bias], bank_lr)
        if self.align is not None:
            set_lr_multiplier([self.align], align_lr)
        if self.gate is not None:
            set_lr_multiplier(self.gate.parameters(), gate_lr)
        self.register_buffer("uniform_gates", torch.full((k,), 1.0 / k), persistent=False)
        # Names start with "running_": SB3's DQN copies such buffers to its target network.
        # The gates at the start, before any batch (export_lite of an untrained model uses them).
        start = self.uniform_gates.clone() if self.gate is None else normalise(self.gate.bias2.detach(), normalisation)
        self.register_buffer("running_gates", start)
        self.register_buffer("running_updates", torch.zeros(()))
        self.last_gates: torch.Tensor | None = None  # batch mean of the gates last used, for logging
        self._merged_cache: tuple | None = None  # (parameter versions, weight, bias) for inference

    @property
    def n_sources(self) -> int:
        return self.weight.shape[0]

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Gate values for input ``x``: ``(B, K)`` in ``sample`` mode, else ``(K,)``."""
        if self.mode == "uniform":
            return self.uniform_gates
        values = self.gate(x)
        if self.mode == "sample":
            return values
        batch_mean = values.mean(0)
        if self.mode == "batch":
            return batch_mean
        # lite: forward with the moving average (same in train and eval), gradient via the batch mean.
        detached = batch_mean.detach()
        if self.running_updates.item() == 0:
            self.running_gates.copy_(detached)
            self.running_updates.fill_(1)
        gates = self.running_gates.clone() + (batch_mean - detached)
        if self.training:
            self.running_gates.mul_(1.0 - self.lite_momentum).add_(detached, alpha=self.lite_momentum)
            self.running_updates.add_(1)
        return gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._can_use_merged():
            # Inference with constant gates (rollouts, evaluation): one plain layer, merged once
            # per parameter update instead of aggregating the K sources at every call.
            weight, bias = self._cached_merged()
            self.last_gates = self.running_gates if self.mode == "lite" else self.uniform_gates
            if self.is_conv:
                return F.conv2d(x, weight, bias, self.stride, self.padding)
            return F.linear(x.flatten(1), weight, bias)
        # A forward that can lead to an optimizer step: the merged layer must be built again after it. Fused
        # optimizers (torch.optim.Adam(fused=True), FastCnnPolicy's default) step without bumping the tensors'
        # version counters, which alone would leave a uniform layer acting with the weights it first merged.
        self._merged_cache = None
        gates = self.gates(x)
        self.last_gates = gates.detach().reshape(-1, self.n_sources).mean(0)
        if self.is_conv:
            return zoo_conv2d(x, self.weight, self.bias, gates, self.align, self.stride, self.padding)
        return zoo_linear(x.flatten(1), self.weight, self.bias, gates, self.align)

    def _can_use_merged(self) -> bool:
        if self.training or torch.is_grad_enabled():
            return False
        if not (self.mode == "uniform" or (self.mode == "lite" and self.running_updates.item() > 0)):
            return False
        # Cached only in a network an optimizer trains (its bank carries a gradient): the cache is keyed by the
        # tensors' version counters, which an optimizer step bumps. SB3 updates target networks through ``.data``
        # (polyak_update), which bumps no version counter, so a cached target network would never see its
        # updates; it has no gradients, and aggregates at every call instead.
        return self.weight.grad is not None

    def _cached_merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        # In-place changes outside training (load_state_dict, an EMA update) bump _version; a training forward,
        # which precedes every optimizer step, drops the cache (forward).
        tensors = [t for t in (self.weight, self.bias, self.align, self.running_gates) if t is not None]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._merged_cache is None or self._merged_cache[0] != key:
            self._merged_cache = (key, *self.merged())
        return self._merged_cache[1], self._merged_cache[2]

    @torch.no_grad()
    def merged(self, gates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The single plain layer ``(Σ_k g_k A_k W_k, Σ_k g_k A_k b_k)`` for constant gates.

        :param gates: ``(K,)``; default: the gates this layer uses at inference (the moving
            average in ``lite`` mode, ``1/K`` in ``uniform`` mode).
        """
        if gates is None:
            if self.mode == "lite":
                gates = self.running_gates
            elif self.mode == "uniform":
                gates = self.uniform_gates
            else:
                raise ValueError(
                    f"A {self.mode!r} layer's gates depend on its input: pass constant gates, or use mode='lite'."
                )
        # Always in the parameters' dtype: a merge under bf16 autocast (FastCnnPolicy's rollouts)
        # would otherwise cache bf16 weights that a later float32 call cannot use.
        with torch.autocast(self.weight.device.type, enabled=False):
            return merge(gates, self.weight, self.align), mix(gates, align_biases(self.bias, self.align))
