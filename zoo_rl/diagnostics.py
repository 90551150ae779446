"""Measures of a Zoo-Tuning network against its sources: how far a layer moved, what its gates weigh, and
the scale of its features at the start of training.

:func:`zoo_rl.study.diagnostics.diagnose_run` applies them to a study's finished runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from zoo_rl.aggregate import merge
from zoo_rl.extractor import ZooExtractor, cached_zoo
from zoo_rl.sources import LAYERS


def relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    return float((now.float() - before.float()).norm() / before.float().norm().clamp_min(1e-12))


def start_gate(normalisation: str | None, k: int) -> float:
    """Every gate's value at the start of training (the gate's last layer starts at zero): sigmoid(0) for
    the paper's sigmoid gates, 1/K for softmax, sigmoid-sum and uniform weight averaging."""
    return 0.5 if normalisation == "sigmoid" else 1.0 / k


def merged_weight(bank: torch.Tensor, align: torch.Tensor | None, gates: torch.Tensor) -> torch.Tensor:
    """``sum_k g_k A_k W_k`` of a ``(K, O, ...)`` bank, in float32 (:func:`zoo_rl.aggregate.merge`)."""
    return merge(gates.float(), bank.float(), None if align is None else align.float())


def effective_sources(gates: np.ndarray) -> float:
    """``exp(entropy)`` of gates normalised to sum to 1: K for uniform gates, 1 for a one-hot."""
    p = np.asarray(gates, dtype=float)
    if not np.isfinite(p).all() or p.sum() <= 0:
        return float("nan")
    p = p / p.sum()
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()))


def weight_agreement(zoo: list[str]) -> pd.DataFrame:
    """How alike the sources' weights are, per layer: the cosine between every two sources' flattened weights.

    With equal gates the merged layer is a weighted sum of the sources' weights: 1 for two copies of one
    network, near 0 for networks trained apart. How the sum's features scale on the target's observations is
    :func:`feature_scale`'s measurement, not this one's.

    :param zoo: source specs (as for :class:`~zoo_rl.extractor.ZooExtractor`).
    :return: one row per layer: ``layer, pairs, cosine_min, cosine_mean, cosine_max``.
    """
    sources = cached_zoo(list(zoo))
    rows = []
    for layer in LAYERS:
        flat = torch.stack([s.state[f"{layer}.weight"].flatten() for s in sources])
        flat = flat / flat.norm(dim=1, keepdim=True)
        pairs = (flat @ flat.T)[torch.triu_indices(len(sources), len(sources), offset=1).unbind()]
        rows.append({"layer": layer, "pairs": len(pairs), "cosine_min": float(pairs.min()),
                     "cosine_mean": float(pairs.mean()), "cosine_max": float(pairs.max())})
    return pd.DataFrame(rows)


def feature_scale(zoo: list[str], observations: torch.Tensor,
                  normalisations: tuple[str, ...] = ("softmax", "sigmoid")) -> pd.DataFrame:
    """Root-mean-square of each layer's output (after ReLU) on ``observations``: every source alone,
    then the Zoo-Tuning network at the start of training for each gate normalisation.

    At the start every gate is equal (the gate's last layer is zero): ``softmax`` and ``sigmoid-sum``
    average the K sources, ``sigmoid`` (the paper's) sums them with weights 0.5. Averaging networks
    trained independently (unrelated tasks, different seeds) shrinks their weights, roughly by
    ``1/sqrt(K)`` per layer where the sources are uncorrelated, and the shrinkage compounds over the
    layers; summing with 0.5 grows them where sources agree. Either way the target starts from features
    of another scale than any source's, which this measures.

    The pre-activations say why a sum can fall silent. In the first layer (one input for all) the sum's
    pre-activation is exactly the gate-weighted sum of the sources': their means add in step, while the
    input-dependent parts of filters trained apart add roughly in quadrature. Sources whose units mostly sit
    below zero (a negative mean, sparse features) thus give a sum whose mean-to-spread ratio is about
    ``sqrt(K)`` times theirs, and fewer of its units fire; later layers repeat it on the sum's own features.

    :param zoo: source specs (as for :class:`~zoo_rl.extractor.ZooExtractor`).
    :param observations: ``(B, C, H, W)`` float images scaled to [0, 1] (SB3 divides by 255 first).
    :return: columns ``network, layer, rms, pre_mean, pre_std, active``: the output's RMS, the pre-activation's
        mean and standard deviation (over observations, units and positions) and the share of units above
        zero; networks are the source names, then ``zoo <normalisation>``.
    """
    import gymnasium as gym

    space = gym.spaces.Box(0, 255, tuple(observations.shape[1:]), np.uint8)
    names = [s.name for s in cached_zoo(list(zoo))]
    networks = [(name, ZooExtractor(space, [spec], gate="uniform")) for name, spec in zip(names, zoo)]
    networks += [(f"zoo {n}", ZooExtractor(space, list(zoo), gate="lite", normalisation=n)) for n in normalisations]
    rows = []
    with torch.no_grad():
        for name, extractor in networks:
            extractor.train()  # lite layers take the first batch's gates: the start of training
            x = observations
            for layer_name, layer in zip(LAYERS, extractor.layers.values()):
                pre = layer(x)
                x = torch.relu(pre)
                rows.append({"network": name, "layer": layer_name, "rms": float(x.pow(2).mean().sqrt()),
                             "pre_mean": float(pre.mean()), "pre_std": float(pre.std()),
                             "active": float((pre > 0).float().mean())})
    return pd.DataFrame(rows)
