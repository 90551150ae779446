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
  layer ``sum_k g_k A_k W_k`` against the one it started as (every gate at its start value: the run's
  ``init_gates`` for a ranked start, else 1/K for uniform gates, 0.5 for sigmoid gates and 1/K for the other
  normalisations; A_k = I; the sources' weights). An absolute distance, comparable between
  methods of one study: under Adam every bank takes about the step a plain layer takes, so K sigmoid gates
  at 0.5 move the merged layer about K/2 times as far per update as a fine-tune moves its own
  (``tests/test_layers.py``). NaN for input-dependent gates (``zoo``, batch mode) and scratch.

Whole-policy studies (state-vector targets: MuJoCo bodies, classic-control systems;
:func:`zoo_rl.study.config.whole_policy`) build *every* ``Linear`` (and ``Conv2d``) layer of the SB3 policy --
actor, critics, value and Q heads -- as a zoo layer of K whole-policy sources (:func:`zoo_rl.zoo_policy`). Their
rows name each online zoo layer by its module path in the policy, as :class:`zoo_rl.callbacks.GateLogger` logs it
(``mlp_extractor.policy_net.0``, ``action_net``, ``actor.mu``, ``critic.qf1.2``; target networks are left out:
SB3 copies the online networks into them), with the same four columns; a source's original weight of a layer is
the one :func:`zoo_rl.zoo_policy` put in that layer's bank (:meth:`zoo_rl.policy_sources.PolicySource.tensors`);
input-dependent gates are the run's last ``gates.csv`` rows of extractor ``policy``. A ``finetune:<source>`` run
has one row per ``Linear`` (and ``Conv2d``) layer of its online networks, against that source's layer, gate 1.

No rows, in either kind of study, for ``scratch`` (no source to compare with), ``kickstart`` (a plain network that
the sources only teach) and, in whole-policy studies, ``multipolar``: its K sources stay frozen outside the trained
network, their actions mixed per action dimension by a learned ``K x D`` matrix around an auxiliary network
trained from scratch (:mod:`zoo_rl.multipolar`), so it has no banks, alignments or per-layer gates.

``effective_sources`` summarises a layer's gates as ``exp(entropy)``: K for uniform gates, 1 for gates
that collapsed onto one source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from envs.tasks import task_from_record
from zoo_rl.diagnostics import effective_sources, merged_weight, relative_change, start_gate
from zoo_rl.extractor import cached_zoo
from zoo_rl.files import CONFIG, FINAL, GATES, RESULT, RUN_DIAGNOSTICS
from zoo_rl.policy_sources import PolicySource
from zoo_rl.sources import LAYERS, SourceUnavailable, read_policy_pth
from zoo_rl.study.config import ROOT, cached_policy_zoo, trained_normalisation, whole_policy
from zoo_rl.study.methods import ZOO_GATES


DIAGNOSTIC_COLUMNS = ["method", "seed", "layer", "source", "gate", "align_dev", "drift", "moved"]


def _prefix(state: dict[str, torch.Tensor], suffix: str) -> str | None:
    """The key prefix of the (first) extractor whose keys end with ``suffix``."""
    for key in sorted(state):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def _last_logged_gates(run_dir: Path, extractor: str | None = None) -> dict[tuple[str, str], float]:
    """``{(layer, source): gate}`` of the last step the run's gates.csv logged (of ``extractor`` only, if given)."""
    path = run_dir / GATES
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    if extractor is not None and "extractor" in table:
        table = table[table["extractor"] == extractor]
    if table.empty:
        return {}
    last = table[table["timesteps"] == table["timesteps"].max()]
    return {(str(row.layer), str(row.source)): float(row.gate) for row in last.itertuples()}


def _readable_zoo(zoo: list[str]) -> list[str]:
    """The run's sources, each where it can be read now: a path that is gone but names a committed source
    (``<anything>/agents/<zoo>/<name>``, e.g. a run trained from another checkout) is read from this checkout's
    ``agents/<zoo>/<name>``; other entries are kept as they are."""
    out = []
    for entry in zoo:
        parts = Path(entry).parts
        if not Path(entry).exists() and "agents" in parts:
            local = ROOT.joinpath(*parts[len(parts) - 1 - parts[::-1].index("agents"):])
            if local.exists():
                entry = str(local)
        out.append(entry)
    return out


def _start_gates(config: dict, base: str, normalisation: str | None, k: int) -> torch.Tensor:
    """The ``(K,)`` gates a lite or uniform run's merged layers started with: a ranked start's ``init_gates``, else
    1/K for uniform gates, else every gate at its normalisation's start value."""
    init_gates = (config.get("extractor_kwargs") or {}).get("init_gates")
    if init_gates is not None:
        return torch.tensor(init_gates, dtype=torch.float32)
    if base == "uniform":  # a zoo policy records the library's default normalisation even for uniform gates
        return torch.full((k,), 1.0 / k)
    return torch.full((k,), start_gate(normalisation, k))


def _zoo_layer_rows(method: str, seed: int, layer: str, bank: torch.Tensor, align: torch.Tensor | None,
                    running: torch.Tensor | None, originals: list[torch.Tensor] | None, names: list[str],
                    gate_of: Callable[[str], float], start: torch.Tensor) -> list[tuple]:
    """The rows of one zoo layer, one per source.

    :param bank: ``(K, O, ...)`` the sources' weights as trained; ``align``: ``(K, O, O)`` or ``None``;
        ``running``: the lite moving average (``1/K`` for uniform), or ``None``.
    :param originals: each source's weight of this layer before training, in zoo order (``None``: unreadable).
    :param gate_of: the gate last logged for a source name (input-dependent gates).
    :param start: the ``(K,)`` gates the merged layer started with (lite and uniform).
    """
    base = method.partition(":")[0]
    constant = base in ("zoo-lite", "uniform") and running is not None
    moved = float("nan")
    if constant and originals is not None:
        before = merged_weight(torch.stack([w.float() for w in originals]), None, start)
        moved = float((merged_weight(bank, align, running) - before).norm())
    rows = []
    for i, name in enumerate(names):
        gate = float(running[i]) if constant else gate_of(name)  # what the merged network uses (1/K for uniform)
        align_dev = (float((align[i] - torch.eye(align.shape[-1])).norm() / math.sqrt(align.shape[-1]))
                     if align is not None else float("nan"))
        drift = relative_change(bank[i], originals[i]) if originals is not None else float("nan")
        rows.append((method, seed, layer, name, gate, align_dev, drift, moved))
    return rows


def whole_policy_run(config: dict) -> bool:
    """Whether a run's ``config.json`` is a whole-policy study's (:func:`zoo_rl.study.config.whole_policy` of its
    recorded task: MuJoCo bodies and classic-control systems)."""
    record = config.get("task") or {}
    try:
        return whole_policy(task_from_record(record))
    except (ValueError, KeyError, TypeError):  # a task this version does not know: by its record's fields
        return "body" in record or "system" in record


def _online_layers(state: dict[str, torch.Tensor], suffix: str, dims: tuple[int, ...]) -> list[str]:
    """Paths of the online networks' layers with a ``<path><suffix>`` entry whose ``weight`` has ``dims`` dimensions,
    in the policy's order; a module shared under several paths (SB3's shared features extractor) once, under its
    first, as :meth:`torch.nn.Module.named_modules` and so :class:`~zoo_rl.callbacks.GateLogger` name it."""
    paths, seen = [], set()
    for key in state:
        if not key.endswith(suffix):
            continue
        path = key[: -len(suffix)]
        weight = state.get(f"{path}.weight")
        if "_target" in path or weight is None or weight.dim() not in dims or f"{path}.bias" not in state:
            continue
        storage = (weight.untyped_storage().data_ptr(), weight.storage_offset())
        if storage not in seen:
            seen.add(storage)
            paths.append(path)
    return paths


def _source_weights(source: PolicySource, paths: list[str]) -> dict[str, torch.Tensor]:
    """``source``'s weight of each layer path of the policy, as :func:`zoo_rl.zoo_policy` fills the layer's bank."""
    keys = [f"{path}.weight" for path in paths]
    tensors = source.tensors("", keys)
    return {path: tensors[key] for path, key in zip(paths, keys) if key in tensors}


def _whole_policy_rows(run_dir: Path, config: dict, state: dict[str, torch.Tensor]) -> list[tuple]:
    """The rows of a whole-policy run (:func:`zoo_rl.zoo_policy`'s zoo layers, or a whole-policy fine-tune)."""
    method, seed = config["method"], int(config["seed"])
    base, _, arg = method.partition(":")
    if base not in ZOO_GATES and base != "finetune":
        return []
    try:  # read once per process: a study's runs share their zoo
        zoo = _readable_zoo(config.get("zoo") or [])
        sources = cached_policy_zoo(zoo) if zoo else []
    except (SourceUnavailable, FileNotFoundError, ValueError):
        sources = []
    rows: list[tuple] = []
    if base == "finetune":
        paths = _online_layers(state, ".weight", (2, 4))
        source = next((s for s in sources if s.name == arg), None)
        originals = _source_weights(source, paths) if source is not None else {}
        for path in paths:
            drift = moved = float("nan")
            if path in originals and originals[path].shape == state[f"{path}.weight"].shape:
                now, before = state[f"{path}.weight"].float(), originals[path].float()
                drift, moved = relative_change(now, before), float((now - before).norm())
            rows.append((method, seed, path, arg, 1.0, float("nan"), drift, moved))
        return rows
    paths = _online_layers(state, ".running_gates", (3, 5))  # zoo layers: (K, O, I) and (K, O, I, kh, kw) banks
    per_source = [_source_weights(s, paths) for s in sources]
    logged = _last_logged_gates(run_dir, extractor="policy")
    normalisation = trained_normalisation(run_dir, method)
    for path in paths:
        bank = state[f"{path}.weight"]
        k = bank.shape[0]
        fits = len(sources) == k and all(path in w and w[path].shape == bank.shape[1:] for w in per_source)
        names = [s.name for s in sources] if len(sources) == k else [f"source{i}" for i in range(k)]
        rows += _zoo_layer_rows(method, seed, path, bank, state.get(f"{path}.align"), state.get(f"{path}.running_gates"),
                                [w[path] for w in per_source] if fits else None, names,
                                lambda name, path=path: logged.get((path, name), float("nan")),
                                _start_gates(config, base, normalisation, k))
    return rows


def diagnose_run(run_dir: str | Path) -> pd.DataFrame:
    """Rows of :data:`DIAGNOSTIC_COLUMNS` for one finished run of a study: a ZooExtractor study's, or a whole-policy
    study's (see the module docstring); empty for scratch, multipolar and kickstart runs and unfinished runs.

    Sources that cannot be read any more give NaN drifts (and moves of lite and uniform layers); the gates and
    alignments come from the model alone.
    """
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / CONFIG, run_dir / FINAL
    stored = run_dir / RUN_DIAGNOSTICS  # a parked run's, computed before its final model was left out
    if not model_path.is_file() and stored.is_file() and (run_dir / RESULT).is_file():
        return pd.read_csv(stored).reindex(columns=DIAGNOSTIC_COLUMNS)
    if not (config_path.is_file() and model_path.is_file()):
        return pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    config = json.loads(config_path.read_text())
    method, seed = config["method"], int(config["seed"])
    base, _, arg = method.partition(":")
    if base == "scratch":
        return pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    state = read_policy_pth(model_path)
    if whole_policy_run(config):
        return pd.DataFrame(_whole_policy_rows(run_dir, config, state), columns=DIAGNOSTIC_COLUMNS)
    try:  # read once per process: a study's runs share their zoo
        sources = cached_zoo(_readable_zoo(config.get("zoo") or []))
    except (SourceUnavailable, FileNotFoundError):
        sources = []
    rows = []
    zoo_prefix = _prefix(state, "layers.cnn_0.weight")
    if zoo_prefix is not None:
        logged = _last_logged_gates(run_dir)
        normalisation = trained_normalisation(run_dir, method)
        for layer in LAYERS:
            key = zoo_prefix + "layers." + layer.replace(".", "_") + "."
            bank = state[key + "weight"]
            k = bank.shape[0]
            fits = len(sources) == k
            names = [s.name for s in sources] if fits else [f"source{i}" for i in range(k)]
            rows += _zoo_layer_rows(method, seed, layer, bank, state.get(key + "align"), state.get(key + "running_gates"),
                                    [s.state[f"{layer}.weight"] for s in sources] if fits else None, names,
                                    lambda name, layer=layer: logged.get((layer.replace(".", "_"), name), float("nan")),
                                    _start_gates(config, base, normalisation, k))
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
    mean alignment deviation and mean drift over sources, and how far the layer the agent acts with moved.
    Methods in name order, each method's layers in the order of its rows: the network's, as :func:`diagnose_run`
    lists them (a whole policy's layers in its state dict's order, not alphabetically)."""
    rows = []
    for (method, layer), g in table.groupby(["method", "layer"], sort=False):
        gates = g.groupby("source")["gate"].mean()
        per_seed = [effective_sources(s["gate"].to_numpy()) for _, s in g.groupby("seed")]
        known = gates.dropna()
        rows.append({"method": method, "layer": layer, "seeds": g["seed"].nunique(),
                     "effective_sources": float(np.mean(per_seed)),
                     "top_source": known.idxmax() if not known.empty else None,
                     "top_gate": float(known.max()) if not known.empty else float("nan"), "align_dev": float(g["align_dev"].mean()),
                     "drift": float(g["drift"].mean()),
                     "moved": float(g.groupby("seed")["moved"].first().mean()) if "moved" in g else float("nan")})
    summary = pd.DataFrame(rows)
    return summary.sort_values("method", kind="stable", ignore_index=True) if rows else summary
