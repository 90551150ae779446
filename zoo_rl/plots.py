"""Plots of a transfer study, from its CSV files only (no model is loaded): ``python experiments/plot.py
<study>`` draws them, :func:`make_plots` from Python (needs matplotlib: ``pip install zoo-rl[plots]``).

Figures: learning curves (mean over seeds with a 95% bootstrap band, x in agent steps), the
gates over training per layer and source, and the summary: each method's IQM final return with
its 95% stratified-bootstrap interval, beside its difference to scratch with its interval.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from zoo_rl.files import CURVES, GATES, RESULTS, SUMMARY

matplotlib.use("Agg")  # files only, no display
matplotlib.rcParams["svg.hashsalt"] = "zoo-rl"  # stable element ids: republishing the same data changes no file


def bootstrap_band(values: np.ndarray, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (1-D)."""
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(reps, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def method_styles(methods: list[str]) -> dict[str, dict[str, object]]:
    """One colour per method (ten distinct hues, then their light shades: a study with every fine-tune
    and ablation has more than ten methods), dashed fine-tunes and a dotted scratch, so that no two
    curves look alike."""
    tab20 = plt.get_cmap("tab20")
    colours = [tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # the ten dark hues, then their light pairs
    styles = {}
    for i, method in enumerate(methods):
        base = method.partition(":")[0].partition(" [")[0]  # "scratch [study]": compare.py's labels
        styles[method] = dict(color=colours[i % 20], linestyle={"finetune": "--", "scratch": ":"}.get(base, "-"))
    return styles


def plot_curves(curves: pd.DataFrame, ax) -> None:
    styles = method_styles(sorted(curves["method"].unique()))
    for method, g in curves.groupby("method"):
        stats = []
        for steps, h in g.groupby("steps"):
            low, high = bootstrap_band(h["return"].to_numpy())
            stats.append((steps, h["return"].mean(), low, high))
        steps, mean, low, high = map(np.asarray, zip(*sorted(stats)))
        ax.plot(steps, mean, label=f"{method} (n={g['seed'].nunique()})", **styles[method])
        ax.fill_between(steps, low, high, color=styles[method]["color"], alpha=0.12)
    ax.set_xlabel("agent steps")
    ax.set_ylabel("evaluation return (full games)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)


def plot_gates(gates: pd.DataFrame, path_stem: Path) -> list[Path]:
    written = []
    for method, g in gates.groupby("method"):
        layers = sorted(g["layer"].unique())
        fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), sharey=True, squeeze=False)
        for ax, layer in zip(axes[0], layers):
            h = g[g["layer"] == layer].groupby(["timesteps", "source"])["gate"].mean().unstack()
            h.plot(ax=ax, legend=ax is axes[0][-1])
            ax.set_title(f"{method}: {layer}", fontsize=9)
            ax.set_xlabel("agent steps")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mean gate (over seeds)")
        if axes[0][-1].get_legend() is not None:
            axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout()
        stem = path_stem.with_name(f"{path_stem.name}_{method.replace(':', '-')}")  # no colons in file names
        written += save(fig, stem)
    return written


def plot_summary(summary: pd.DataFrame, axes) -> None:
    """Left: each method's IQM final return as a point with its 95% interval (no bars from 0, so that
    negative and mixed-sign returns stay readable), scratch's as a line. Right: the difference of the
    mean to scratch with its 95% bootstrap interval, 0 as a line; where the study has no scratch runs
    the panel says so."""
    table = summary.sort_values("iqm").reset_index(drop=True)
    y = np.arange(len(table))
    styles = method_styles(sorted(table["method"]))
    colours = [styles[m]["color"] for m in table["method"]]
    left, right = axes
    err = np.vstack([table["iqm"] - table["iqm_low"], table["iqm_high"] - table["iqm"]]).clip(min=0)
    for i in y:
        left.errorbar(table["iqm"][i], i, xerr=err[:, i:i + 1], fmt="o", color=colours[i], capsize=3)
    if "scratch" in set(table["method"]):
        left.axvline(table.loc[table["method"] == "scratch", "iqm"].item(), color="grey", linestyle=":", lw=1)
    left.set_yticks(y, table["method"])
    left.set_xlabel("IQM final return [95% CI]")
    left.grid(axis="x", alpha=0.3)
    if "vs_scratch" in table and table["vs_scratch"].notna().any():
        diff = table["vs_scratch"]
        err = np.vstack([diff - table["vs_scratch_low"], table["vs_scratch_high"] - diff]).clip(min=0)
        for i in y:
            if np.isfinite(diff[i]) and table["method"][i] != "scratch":
                right.errorbar(diff[i], i, xerr=np.nan_to_num(err[:, i:i + 1]), fmt="o", color=colours[i], capsize=3)
        right.axvline(0, color="grey", lw=1)
        right.set_xlabel("mean - scratch's [95% CI]")
        right.grid(axis="x", alpha=0.3)
    else:
        right.text(0.5, 0.5, "no scratch runs:\ndifferences not drawn", ha="center", va="center",
                   transform=right.transAxes)
        right.set_xticks([])
    right.tick_params(labelleft=False)


def save(fig, stem: Path) -> list[Path]:
    """``fig`` as ``<stem>.png`` and ``<stem>.svg`` (a dot in the stem, as in ``align-lr0.1``, stays)."""
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths


def make_plots(study_dir: Path, out: Path | None = None) -> list[Path]:
    """Write every figure of ``study_dir``; return the files written."""
    study_dir = Path(study_dir)
    out = Path(out or study_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (CURVES, SUMMARY):
        if not (study_dir / name).is_file():
            raise FileNotFoundError(f"{study_dir / name} is missing: run experiments/transfer.py first.")
    target = ""
    if (study_dir / RESULTS).is_file():
        results = pd.read_csv(study_dir / RESULTS)
        target = ", ".join(results["target"].unique()) if not results.empty else ""
    written = []
    curves = pd.read_csv(study_dir / CURVES)
    if not curves.empty:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        plot_curves(curves, ax)
        ax.set_title(f"Transfer to {target}")
        written += save(fig, out / "learning_curves")
    else:
        print(f"learning curves not drawn: {study_dir / CURVES} has no evaluation yet", file=sys.stderr)
    summary = pd.read_csv(study_dir / SUMMARY) if (study_dir / SUMMARY).stat().st_size > 1 else pd.DataFrame()
    if summary.empty:
        print(f"summary figure not drawn: {study_dir / SUMMARY} has no finished run yet", file=sys.stderr)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(summary) + 1.4), sharey=True)
        plot_summary(summary, axes)
        fig.suptitle(f"Final return, {target}")
        written += save(fig, out / "summary")
    if (study_dir / GATES).is_file():
        gates = pd.read_csv(study_dir / GATES)
        if not gates.empty:
            written += plot_gates(gates, out / "gates")
    return written
