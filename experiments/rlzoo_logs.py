"""A study folder in the RL Baselines3 Zoo's log layout, for its plot scripts.

    python experiments/rlzoo_logs.py runs/transfer/Pong-ppo --out logs-pong
    python -m rl_zoo3.plots.all_plots -a ppo -e Pong -f logs-pong/scratch logs-pong/zoo-lite --no-display
    python -m rl_zoo3.plots.plot_train -a ppo -e Pong -f logs-pong/zoo-lite

The RL Zoo reads ``<exp-folder>/<algo>/<EnvId>_<n>/``: ``evaluations.npz`` (``all_plots``) and the
Monitor files (``plot_train``, through SB3's ``load_results``). Each method of the study becomes
one experiment folder, each seed one ``<EnvId>_<seed + 1>`` run, whose files link to the study's
own (nothing is copied; where links cannot be made, files are copied). A study run folder is
itself readable by SB3's ``load_results``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from envs.tasks import task_from_record
from zoo_rl.study import run_path
from zoo_rl.files import CONFIG, EVALUATIONS


def run_folders(study: Path) -> list[Path]:
    """Every run folder of ``study`` with an evaluation (finished or not)."""
    return sorted(p.parent for p in Path(study).glob(f"*/seed*/{EVALUATIONS}") if (p.parent / CONFIG).is_file())


def env_name(task: dict) -> str:
    """The RL Zoo's name of a task: the gym id of a default Atari game (``PongNoFrameskip-v4``), else the slug
    (``Breakout-m4``, ``lab2d-commons_harvest``), which ``-e`` matches as a substring either way."""
    resolved = task_from_record(task)
    flavoured = getattr(resolved, "mode", None) is not None or getattr(resolved, "difficulty", None) is not None
    return resolved.env_id if resolved.family == "atari" and not flavoured else resolved.slug


def _link(src: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        dest.symlink_to(os.path.relpath(src.resolve(), dest.parent.resolve()))
    except OSError:
        shutil.copy2(src, dest)


def export(study: Path, out: Path) -> dict[str, list[Path]]:
    """Write the RL Zoo layout of ``study`` under ``out``; returns the run folders made, by method.

    :raises FileNotFoundError: ``study`` has no run with an evaluation yet.
    """
    runs = run_folders(study)
    if not runs:
        raise FileNotFoundError(f"{study} has no run with {EVALUATIONS}: is it a study folder, and has a run "
                                "reached its first evaluation?")
    made: dict[str, list[Path]] = {}
    for run in runs:
        config = json.loads((run / CONFIG).read_text())
        method, seed = config["method"], int(config["seed"])
        env_id = env_name(config["task"])
        algo = config["study"]["algo"]
        dest = Path(out) / run_path(Path(""), method, seed).parent / algo / f"{env_id}_{seed + 1}"
        dest.mkdir(parents=True, exist_ok=True)
        _link(run / EVALUATIONS, dest / EVALUATIONS)
        for monitor in sorted([*run.glob("*.monitor.csv"), *run.glob("monitor/*.monitor.csv")]):
            _link(monitor, dest / monitor.name)
        made.setdefault(method, []).append(dest)
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study folder (runs/transfer/<name>)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the RL Zoo layout (e.g. logs-pong)")
    args = parser.parse_args(argv)
    try:
        made = export(args.study, args.out)
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")
    first = next(iter(made.values()))[0]
    algo, env = first.parent.name, first.name.rsplit("_", 1)[0].removesuffix("NoFrameskip-v4")
    folders = " ".join(str(args.out / run_path(Path(""), m, 0).parent) for m in made)
    for method, dests in made.items():
        print(f"{method}: {len(dests)} run(s) in {dests[0].parent.parent.parent}")
    print(f"\npython -m rl_zoo3.plots.all_plots -a {algo} -e {env} -f {folders} --no-display")
    print(f"python -m rl_zoo3.plots.plot_train -a {algo} -e {env} -f {dests[0].parent.parent.parent}")


if __name__ == "__main__":
    main()
