"""One level down: how far each finished run of a study moved away from its sources.

When Zoo-Tuning does not beat fine-tuning, the first questions are: did the gates collapse onto one
source or stay uniform, did the alignment learn anything, did the source banks move at all? This
module reads a run's final model (``final.zip``, only its ``policy.pth``) and the sources it started
from, and answers per layer and source:

- ``gate``: the gate the final network uses: the lite moving average, ``1/K`` for uniform, or for
  input-dependent modes the last batch-mean gate logged in the run's ``gates.csv``;
- ``align_dev``: ``||A_k - I||_F / ||I||_F``, how far source k's channel alignment left the identity
  (0: alignment unused; NaN without alignment);
- ``drift``: ``||W_k - W_k^0||_F / ||W_k^0||_F``, how far training moved source k's weights in the bank
  (for ``finetune:<source>`` runs: the fine-tuned layer against that source);
- ``moved``: ``||W - W^0||_F`` of the layer the agent acts with, one value per layer (repeated on each
  source's row): for a fine-tune its weight against the source; for ``zoo-lite`` and ``uniform`` the merged
  layer ``sum_k g_k A_k W_k`` against the one it started as (every gate at its start value: 0.5 for
  sigmoid gates, 1/K otherwise; A_k = I; the sources' weights). An absolute distance, comparable between
  methods of one study: under Adam every bank takes about the step a plain layer takes, so K sigmoid gates
  at 0.5 move the merged layer about K/2 times as far per update as a fine-tune moves its own
  (``tests/test_layers.py``). NaN for input-dependent gates (``zoo``, batch mode) and scratch.

``effective_sources`` summarises a layer's gates as ``exp(entropy)``: K for uniform gates, 1 for gates
that collapsed onto one source.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo_rl.aggregate import merge
from zoo_rl.extractor import ZooExtractor, cached_zoo
from zoo_rl.sources import LAYERS, SourceUnavailable
from zoo_rl.study import trained_normalisation
from zoo_rl.training import FINAL  # the final model's file name in a run folder, written by the study runner

DIAGNOSTIC_COLUMNS = ["method", "seed", "layer", "source", "gate", "align_dev", "drift", "moved"]


def read_policy_state(model_zip: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an SB3 model's ``policy.pth``."""
    with zipfile.ZipFile(model_zip) as archive:
        data = archive.read("policy.pth")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _prefix(state: dict[str, torch.Tensor], suffix: str) -> str | None:
    """The key prefix of the (first) extractor whose keys end with ``suffix``."""
    for key in sorted(state):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


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


def _last_logged_gates(run_dir: Path) -> dict[tuple[str, str], float]:
    path = run_dir / "gates.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    if table.empty:
        return {}
    last = table[table["timesteps"] == table["timesteps"].max()]
    return {(row.layer, row.source): float(row.gate) for row in last.itertuples()}


def diagnose_run(run_dir: str | Path) -> pd.DataFrame:
    """Rows of :data:`DIAGNOSTIC_COLUMNS` for one finished run (empty for scratch or unfinished runs).

    Sources that cannot be read any more give NaN drifts; the gates and alignments come from the
    model alone.
    """
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / FINAL
    if not (config_path.is_file() and model_path.is_file()):
        return pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    config = json.loads(config_path.read_text())
    method, seed = config["method"], int(config["seed"])
    base, _, arg = method.partition(":")
    if base == "scratch":
        return pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    state = read_policy_state(model_path)
    try:  # read once per process: a study's runs share their zoo
        sources = cached_zoo(config.get("zoo") or [])
    except (SourceUnavailable, FileNotFoundError):
        sources = []
    rows = []
    zoo_prefix = _prefix(state, "layers.cnn_0.weight")
    if zoo_prefix is not None:
        logged = _last_logged_gates(run_dir)
        normalisation = trained_normalisation(run_dir, method)
        for layer in LAYERS:
            key = zoo_prefix + "layers." + layer.replace(".", "_") + "."
            bank, align = state[key + "weight"], state.get(key + "align")
            k = bank.shape[0]
            names = [s.name for s in sources] if len(sources) == k else [f"source{i}" for i in range(k)]
            running = state.get(key + "running_gates")
            moved = float("nan")
            if base in ("zoo-lite", "uniform") and running is not None and len(sources) == k:
                start = torch.stack([s.state[f"{layer}.weight"].float() for s in sources])
                start = merged_weight(start, None, torch.full((k,), start_gate(normalisation, k)))
                moved = float((merged_weight(bank, align, running) - start).norm())
            for i, name in enumerate(names):
                if base in ("zoo-lite", "uniform") and running is not None:
                    gate = float(running[i])  # what the merged network uses (1/K for uniform)
                else:  # input-dependent gates: the last batch mean the run logged
                    gate = logged.get((layer.replace(".", "_"), name), float("nan"))
                align_dev = (float((align[i] - torch.eye(align.shape[-1])).norm() / math.sqrt(align.shape[-1]))
                             if align is not None else float("nan"))
                drift = (relative_change(bank[i], sources[i].state[f"{layer}.weight"])
                         if len(sources) == k else float("nan"))
                rows.append((method, seed, layer, name, gate, align_dev, drift, moved))
    elif base == "finetune":
        prefix = _prefix(state, "cnn.0.weight")
        source = next((s for s in sources if s.name == arg), None)
        for layer in LAYERS:
            drift = moved = float("nan")
            if source is not None and prefix is not None:
                now, before = state[f"{prefix}{layer}.weight"].float(), source.state[f"{layer}.weight"].float()
                drift, moved = relative_change(now, before), float((now - before).norm())
            rows.append((method, seed, layer, arg, 1.0, float("nan"), drift, moved))
    return pd.DataFrame(rows, columns=DIAGNOSTIC_COLUMNS)


def diagnose_study(out: str | Path) -> pd.DataFrame:
    """:func:`diagnose_run` over every run folder of a study, one long table."""
    frames = [diagnose_run(p) for p in sorted(Path(out).glob("*/seed*")) if p.is_dir()]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def diagnostics_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and layer, means over seeds: effective sources, the top source and its gate,
    mean alignment deviation and mean drift over sources, and how far the layer the agent acts with moved."""
    rows = []
    for (method, layer), g in table.groupby(["method", "layer"], sort=True):
        gates = g.groupby("source")["gate"].mean()
        per_seed = [effective_sources(s["gate"].to_numpy()) for _, s in g.groupby("seed")]
        known = gates.dropna()
        rows.append({"method": method, "layer": layer, "seeds": g["seed"].nunique(),
                     "effective_sources": float(np.mean(per_seed)),
                     "top_source": known.idxmax() if not known.empty else None,
                     "top_gate": float(known.max()) if not known.empty else float("nan"), "align_dev": float(g["align_dev"].mean()),
                     "drift": float(g["drift"].mean()),
                     "moved": float(g.groupby("seed")["moved"].first().mean()) if "moved" in g else float("nan")})
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

    :param zoo: source specs (as for :class:`~zoo_rl.extractor.ZooExtractor`).
    :param observations: ``(B, C, H, W)`` float images scaled to [0, 1] (SB3 divides by 255 first).
    :return: columns ``network, layer, rms``; networks are the source names, then ``zoo <normalisation>``.
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
                x = torch.relu(layer(x))
                rows.append({"network": name, "layer": layer_name, "rms": float(x.pow(2).mean().sqrt())})
    return pd.DataFrame(rows)
