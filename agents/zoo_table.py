"""Print a zoo's table from the committed sources' meta.json files, and draw their learning curves.

    python agents/zoo_table.py                       # the Atari zoo, agents/zoo
    python agents/zoo_table.py agents/zoo-lab2d      # the Lab2D zoo
    python agents/zoo_table.py agents/zoo-strong --curves docs/zoo-strong-curves.png

Sources of the zoo's manifest that are still training (parked in ``_inprogress/``) get a row with their
step count and last evaluation so far. Where the sources record them, the table adds the target return
they train towards and their cost (CPU-hours of all calls: ``cpu_hours`` in meta.json, ``cpu_seconds`` in a
parked run's status.json). The curves are each source's evaluations during training (``curve.csv``
beside the weights; a parked run's ``evaluations.npz``), with the target return dashed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from envs.tasks import Lab2DTask, resolve
from zoo_rl.files import EVALUATIONS, STATUS
from zoo_rl.training import load_evaluations
from zoo_rl.zoo_training import CURVE_FILE, evaluation_curve, read_manifest

ZOO = Path(__file__).resolve().parent / "zoo"
#: RL Baselines3 Zoo, benchmark.md: PPO after 10M steps on the default flavour (for orientation only).
RL_ZOO_PPO_10M: dict[str, str] = {
    "Pong": "20.99 ± 0.11",
    "Breakout": "398.0 ± 33.3",
    "SpaceInvaders": "960.3 ± 425.4",
    "Seaquest": "1783.6 ± 34.1",
    "Qbert": "15627.1 ± 3313.5",
    "BeamRider": "3397.0 ± 1662.4",
    "Asteroids": "2156.2 ± 744.6",
    "Enduro": "996.4 ± 176.1",
    "RoadRunner": "40680.6 ± 6675.1",
}
#: The RL Baselines3 Zoo's published agents of the shipped bodies (their Hugging Face model cards, ``sb3/<algo>-<env>``:
#: mean ± std of the card's evaluation, deterministic actions), for the continuous-control zoos' variants of them.
RL_ZOO_AGENTS: dict[str, str] = {
    "halfcheetah": "PPO 1M (HalfCheetah-v3): 5836.3 ± 171.7",
    "pendulum": "SAC 20k (Pendulum-v1): -176.3 ± 101.6",
}


def rl_zoo_reference(game: str) -> str:
    """The RL Baselines3 Zoo's score for a source's game on its default flavour or shipped body, or ``n/a``."""
    if game in RL_ZOO_PPO_10M:
        return f"PPO 10M: {RL_ZOO_PPO_10M[game]}"
    task = resolve(game)
    body = getattr(task, "body", None) or getattr(task, "system", None)
    return RL_ZOO_AGENTS.get(body, "n/a")


def flavour_of(meta: dict) -> str:
    task = resolve(meta["game"])
    if isinstance(task, Lab2DTask):  # lab2d:<level>[:<argument>][+key=value...]
        argument = task.level.partition(":")[2]
        parts = ([f"argument {argument}"] if argument else []) + [f"{k}={v}" for k, v in task.settings]
        return ", ".join(parts) or "default"
    return ", ".join(f"{k} {meta[k]}" for k in ("mode", "difficulty") if meta.get(k) is not None) or "default"


def zoo_rows(zoo: Path) -> list[dict]:
    """One row per source: the committed ones from meta.json, the manifest's parked ones from their run state."""
    rows = []
    for meta_path in sorted(zoo.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        curve_path = meta_path.parent / CURVE_FILE
        rows.append({**meta, "status": "done", "flavour": flavour_of(meta),
                     "curve": pd.read_csv(curve_path) if curve_path.is_file() else None})
    done = {r["name"] for r in rows}
    manifest = zoo / "manifest.yml"
    for spec in read_manifest(manifest) if manifest.is_file() else []:
        parked = zoo / "_inprogress" / spec.source_name
        if spec.source_name in done or not (parked / STATUS).is_file():
            continue
        status = json.loads((parked / STATUS).read_text())
        curve = evaluation_curve(load_evaluations(parked / EVALUATIONS))
        task = spec.task
        init = spec.init_folder()
        init_meta = init / "meta.json" if init is not None else None
        init_steps = json.loads(init_meta.read_text()).get("steps", 0) if init_meta and init_meta.is_file() else 0
        rows.append({"name": spec.source_name, "game": task.game, "mode": task.mode, "difficulty": task.difficulty,
                     "init": {"steps": init_steps},
                     "flavour": flavour_of({"game": task.game, "mode": task.mode, "difficulty": task.difficulty}),
                     "steps": int(status["num_timesteps"]), "status": "training",
                     "target_return": spec.target_return, "cpu_hours": status.get("cpu_seconds", 0.0) / 3600,
                     "last_evaluation": curve.iloc[-1] if len(curve) else None, "curve": curve})
    return rows


def table(rows: list[dict]) -> str:
    costs = any("cpu_hours" in r for r in rows)
    header = "| source | game | flavour | steps | return (10 games) | random (10 games) |"
    rule = "| --- | --- | --- | --- | --- | --- |"
    if costs:
        header += " target | CPU-hours |"
        rule += " --- | --- |"
    lines = [header + " RL Zoo (default flavour or body) |", rule + " --- |"]
    for r in rows:
        if r["status"] == "done":
            returns = (f"{r['eval_return_mean']:.1f} ± {r['eval_return_std']:.1f} | "
                       f"{r['random_return_mean']:.1f} ± {r['random_return_std']:.1f}")
        else:
            last = r["last_evaluation"]
            returns = ("in training: " + (f"last evaluation {last['return_mean']:.1f} ± {last['return_std']:.1f} "
                                          f"({int(last['episodes'])} games)" if last is not None else "no evaluation yet")
                       + " | ")
        line = f"| {r['name']} | {r['game']} | {r['flavour']} | {r['steps']:,} | {returns} |"
        if costs:
            target = r.get("target_return")
            reached = " (reached)" if r.get("stopped_at_target") else ""
            line += f" {'' if target is None else f'{target:g}'}{reached} | {r.get('cpu_hours', float('nan')):.1f} |"
        lines.append(line + f" {rl_zoo_reference(r['game'])} |")
    if costs:
        lines.append("")
        lines.append(totals(rows))
    return "\n".join(lines)


def totals(rows: list[dict]) -> str:
    """The zoo's cost in one line: CPU-hours of every row, and the agent steps they trained (a source continued
    from another counts from its ``init`` steps)."""
    hours = sum(r.get("cpu_hours", 0.0) for r in rows)
    trained = sum(r["steps"] - int((r.get("init") or {}).get("steps") or 0) for r in rows)
    return f"{len(rows)} sources: {hours:.2f} CPU-hours, {trained:,} agent steps trained in all."


def plot_curves(rows: list[dict], path: Path) -> None:
    """One panel per source: evaluation mean ± std against agent steps, the target return dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("curve") is not None and len(r["curve"])]
    if not rows:
        raise SystemExit("No source has a learning curve (curve.csv, or a parked run's evaluations) to draw.")
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 2.8), squeeze=False)
    for ax, r in zip(axes[0], rows):
        curve = r["curve"]
        steps = curve["steps"].to_numpy() / 1e6
        mean, std = curve["return_mean"].to_numpy(), curve["return_std"].to_numpy()
        ax.plot(steps, mean, marker=".", label="evaluation")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        if r.get("target_return") is not None:
            ax.axhline(r["target_return"], linestyle="--", color="gray", label="target")
        ax.set_title(f"{r['name']}" + ("" if r["status"] == "done" else " (training)"), fontsize=9)
        ax.set_xlabel("agent steps (M)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("return")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoo", nargs="?", type=Path, default=ZOO, help="zoo folder (default: agents/zoo)")
    parser.add_argument("--curves", type=Path, default=None, help="also draw the learning curves into this image")
    args = parser.parse_args()
    rows = zoo_rows(args.zoo)
    print(table(rows))
    if args.curves is not None:
        plot_curves(rows, args.curves)
        print(f"wrote {args.curves}")


if __name__ == "__main__":
    main()
