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
  ``init_gates`` for a ranked start, else 0.5 for sigmoid gates and 1/K otherwise; A_k = I; the sources'
  weights). An absolute distance, comparable between
  methods of one study: under Adam every bank takes about the step a plain layer takes, so K sigmoid gates
  at 0.5 move the merged layer about K/2 times as far per update as a fine-tune moves its own
  (``tests/test_layers.py``). NaN for input-dependent gates (``zoo``, batch mode) and scratch.

``effective_sources`` summarises a layer's gates as ``exp(entropy)``: K for uniform gates, 1 for gates
that collapsed onto one source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo_rl.diagnostics import effective_sources, merged_weight, relative_change, start_gate
from zoo_rl.extractor import cached_zoo
from zoo_rl.files import CONFIG, FINAL, GATES, RESULT, RUN_DIAGNOSTICS
from zoo_rl.sources import LAYERS, SourceUnavailable, read_policy_pth
from zoo_rl.study.config import ROOT, trained_normalisation


DIAGNOSTIC_COLUMNS = ["method", "seed", "layer", "source", "gate", "align_dev", "drift", "moved"]


def _prefix(state: dict[str, torch.Tensor], suffix: str) -> str | None:
    """The key prefix of the (first) extractor whose keys end with ``suffix``."""
    for key in sorted(state):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def _last_logged_gates(run_dir: Path) -> dict[tuple[str, str], float]:
    path = run_dir / GATES
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    if table.empty:
        return {}
    last = table[table["timesteps"] == table["timesteps"].max()]
    return {(row.layer, row.source): float(row.gate) for row in last.itertuples()}


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


def diagnose_run(run_dir: str | Path) -> pd.DataFrame:
    """Rows of :data:`DIAGNOSTIC_COLUMNS` for one finished run of a ZooExtractor study (empty for scratch, unfinished
    runs and runs of whole-policy studies, whose gates per layer are in their gates.csv).

    Sources that cannot be read any more give NaN drifts; the gates and alignments come from the
    model alone.
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
    if base == "scratch" or "body" in (config.get("task") or {}):  # whole-policy runs: their gates are in gates.csv
        return pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    state = read_policy_pth(model_path)
    try:  # read once per process: a study's runs share their zoo
        sources = cached_zoo(_readable_zoo(config.get("zoo") or []))
    except (SourceUnavailable, FileNotFoundError):
        sources = []
    rows = []
    zoo_prefix = _prefix(state, "layers.cnn_0.weight")
    if zoo_prefix is not None:
        logged = _last_logged_gates(run_dir)
        normalisation = trained_normalisation(run_dir, method)
        init_gates = (config.get("extractor_kwargs") or {}).get("init_gates")  # a ranked start's gates
        for layer in LAYERS:
            key = zoo_prefix + "layers." + layer.replace(".", "_") + "."
            bank, align = state[key + "weight"], state.get(key + "align")
            k = bank.shape[0]
            names = [s.name for s in sources] if len(sources) == k else [f"source{i}" for i in range(k)]
            running = state.get(key + "running_gates")
            moved = float("nan")
            if base in ("zoo-lite", "uniform") and running is not None and len(sources) == k:
                start = torch.stack([s.state[f"{layer}.weight"].float() for s in sources])
                gates = (torch.tensor(init_gates, dtype=torch.float32) if init_gates is not None
                         else torch.full((k,), start_gate(normalisation, k)))
                start = merged_weight(start, None, gates)
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
