"""Train a source agent for the zoo, or rebuild the whole zoo from its manifest.

    python agents/train.py --game Breakout --algo ppo --steps 1000000
    python agents/train.py --game Pong --mode 1 --difficulty 1
    python agents/train.py --zoo                  # every source in agents/zoo/manifest.yml
    python agents/train.py --zoo --manifest agents/zoo-lab2d/manifest.yml   # the Lab2D zoo
    python agents/train.py --zoo --manifest agents/zoo-mujoco/manifest.yml  # HalfCheetah variants (MLP, VecNormalize)
    python agents/train.py --zoo --manifest agents/zoo-pendulum/manifest.yml --threads 1  # Pendulum variants (SAC)
    python agents/train.py --park                 # unfinished runs -> agents/zoo/_inprogress/ (commit them)
    python agents/train.py --zoo --refresh-random # recompute the committed sources' random-policy baseline

Runs resume automatically from ``runs/zoo/<name>/checkpoint.zip`` after a kill; the result
is written to ``agents/zoo/<name>/`` (weights.pt + meta.json).

Across machines: ``--park`` copies the unfinished runs' resume state (checkpoint, VecNormalize
statistics and replay buffer where the run has them, evaluations, monitor logs) to ``agents/zoo/_inprogress/<name>/`` so that it can be committed; a later call
on a fresh clone picks it up from there and continues the step count.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import zipfile
from pathlib import Path


import torch

from envs.atari import BACKENDS
from zoo_rl.files import CHECKPOINT, CONFIG, EVALUATIONS, REPLAY_BUFFER, STATUS, VEC_NORMALIZE
from zoo_rl.zoo_training import SourceSpec, read_manifest, refresh_random_returns, train_source

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_EVERY, DEFAULT_EVAL_EPISODES = 250_000, 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--game", help="Atari game, short name (Pong) or full id (PongNoFrameskip-v4), "
                                     "lab2d:<level>[:<argument>][+key=value...], mujoco:<body>[+key=value...] or "
                                     "classic:pendulum[+key=value...]")
    what.add_argument("--zoo", action="store_true", help="train every source of the manifest that is not done yet")
    what.add_argument("--park", action="store_true",
                      help="copy unfinished runs' resume state to agents/zoo/_inprogress/ (to commit) and exit")
    parser.add_argument("--algo", default="ppo", help="ppo (default), a2c, dqn, qrdqn or sac")
    parser.add_argument("--steps", type=int, default=1_000_000, help="agent steps (Atari: 1 step = 4 frames)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", type=int, default=None, help="ALE game mode (default: the game's default)")
    parser.add_argument("--difficulty", type=int, default=None, help="ALE difficulty (default: the game's default)")
    parser.add_argument("--name", default=None, help="source name (default: task slug, e.g. pong-m1-d1)")
    parser.add_argument("--env-backend", choices=BACKENDS, default="gym",
                        help="training environments: gym (default; the committed zoo was trained on it), or ale-py's "
                             "vector env (ale, or auto where it applies: about 20%% faster training)")
    parser.add_argument("--init", default=None,
                        help="continue from a compact zoo source (e.g. agents/zoo/pong-m1): its weights, and its step "
                             "count as the start of the lin_X schedules, which then run to --steps")
    parser.add_argument("--target-return", type=float, default=None,
                        help="stop once an evaluation's mean return reaches this (default: train all --steps)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; two runs on two cores: 1 each)")
    parser.add_argument("--manifest", type=Path, default=ROOT / "agents" / "zoo" / "manifest.yml",
                        help="zoo manifest (agents/zoo/manifest.yml: Atari; agents/zoo-lab2d/manifest.yml: Lab2D)")
    parser.add_argument("--zoo-dir", type=Path, default=None,
                        help="where sources are exported (default: the manifest's folder)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="checkpoints and logs (default: runs/<the zoo folder's name>, e.g. runs/zoo)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between evaluations (default: the manifest entry's, else 250000)")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="games per evaluation (default: the manifest entry's, else 5)")
    parser.add_argument("--checkpoint-every", type=int, default=50_000, help="steps between checkpoints")
    parser.add_argument("--refresh-random", action="store_true",
                        help="instead of training, recompute the random-policy baseline in the selected committed "
                             "sources' meta.json (10 games on fresh environments; weights untouched)")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint instead of resuming")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default=None,
                        help="with --zoo or --park: only these sources of the manifest (comma-separated names)")
    args = parser.parse_args(argv)
    if args.zoo_dir is None:
        args.zoo_dir = args.manifest.parent
    if args.runs_dir is None:
        args.runs_dir = ROOT / "runs" / args.zoo_dir.name
    return args


def manifest_command(manifest: Path, spec: SourceSpec) -> str:
    """The command that trains ``spec`` from its manifest (recorded in its ``meta.json``)."""
    path = manifest.resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"python agents/train.py --zoo --manifest {shown} --only {spec.source_name}"


def is_done(zoo_dir: Path, spec: SourceSpec) -> bool:
    """The source is exported with all its steps, or stopped at its target return."""
    path = zoo_dir / spec.source_name / "meta.json"
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    return meta.get("steps", 0) >= spec.steps or (spec.target_return is not None and bool(meta.get("stopped_at_target")))


#: Files of a run needed to resume it elsewhere (the checkpoint holds weights and optimizer; the VecNormalize
#: statistics of a run that normalises, and the replay buffer of an off-policy run on state vectors, belong to it).
RESUME_FILES = (CHECKPOINT, VEC_NORMALIZE, REPLAY_BUFFER, EVALUATIONS, CONFIG, STATUS)


def copy_run(src: Path, dest: Path, optimizer_dtype: torch.dtype | None = None) -> None:
    """Copy a run's resume state; the checkpoint deflated, its optimizer state cast to ``optimizer_dtype``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*RESUME_FILES, *sorted(p.name for p in src.glob("*.monitor.csv"))):
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / name, dirs_exist_ok=True)
        elif name.endswith(".zip") and (src / name).is_file():
            deflate_zip(src / name, dest / name, optimizer_dtype)
        elif (src / name).is_file():
            shutil.copy2(src / name, dest / name)


#: SB3's file of the optimizer's state inside a saved model.
OPTIMIZER_FILE = "policy.optimizer.pth"
#: Parked checkpoints keep the optimizer's moments in bfloat16: half their size, and Adam's moments are
#: running averages whose last bits do not matter to the steps they make (torch casts them back on load).
PARKED_OPTIMIZER_DTYPE = torch.bfloat16


def cast_optimizer_state(data: bytes, dtype: torch.dtype) -> bytes:
    """An optimizer ``state_dict`` file with its floating state tensors (not step counts) cast to ``dtype``."""
    state = torch.load(io.BytesIO(data), weights_only=True)
    for per_param in state.get("state", {}).values():
        for key, value in per_param.items():
            if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                per_param[key] = value.to(dtype)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def deflate_zip(src: Path, dest: Path, optimizer_dtype: torch.dtype | None = None) -> None:
    """Copy an SB3 zip (stored uncompressed by SB3) with deflate, its optimizer state cast to
    ``optimizer_dtype`` when given (``None``: unchanged)."""
    tmp = dest.with_suffix(".tmp")
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for name in archive.namelist():
            data = archive.read(name)
            if name == OPTIMIZER_FILE and optimizer_dtype is not None:
                data = cast_optimizer_state(data, optimizer_dtype)
            out.writestr(name, data)
    tmp.replace(dest)


def park(runs_dir: Path, parked_dir: Path, zoo_dir: Path, specs: list[SourceSpec]) -> None:
    """Copy every unfinished run's resume state to ``parked_dir`` (committed, so that another machine can resume them)."""
    for spec in specs:
        run = runs_dir / spec.source_name
        if (run / CHECKPOINT).is_file() and not is_done(zoo_dir, spec):
            copy_run(run, parked_dir / spec.source_name, PARKED_OPTIMIZER_DTYPE)
            print(f"{spec.source_name}: parked in {parked_dir / spec.source_name}", flush=True)


def unpark(runs_dir: Path, parked_dir: Path, spec: SourceSpec) -> None:
    """Resume from a parked run when this machine has no checkpoint of its own."""
    parked, run = parked_dir / spec.source_name, runs_dir / spec.source_name
    if (parked / CHECKPOINT).is_file() and not (run / CHECKPOINT).is_file():
        copy_run(parked, run, torch.float32)
        print(f"{spec.source_name}: resuming the parked run from {parked}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parked_dir = args.zoo_dir / "_inprogress"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.zoo or args.park:
        specs = read_manifest(args.manifest)
        if args.only:
            wanted = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = sorted(set(wanted) - {s.source_name for s in specs})
            if unknown:
                raise SystemExit(f"--only: {unknown} not in {args.manifest}; its sources: "
                                 f"{', '.join(s.source_name for s in specs)}.")
            specs = [s for s in specs if s.source_name in wanted]
    else:
        specs = [SourceSpec(game=args.game, algo=args.algo, steps=args.steps, seed=args.seed,
                            mode=args.mode, difficulty=args.difficulty, name=args.name,
                            env_backend=args.env_backend, init=args.init, target_return=args.target_return)]
    for spec in specs:
        spec.task  # validate every entry before training anything
        spec.init_folder()
    if args.park:
        park(args.runs_dir, parked_dir, args.zoo_dir, specs)
        return
    if args.refresh_random:
        for spec in specs:
            meta = refresh_random_returns(spec, args.zoo_dir)
            print(f"{spec.source_name}: random {meta['random_return_mean']:.1f} ± {meta['random_return_std']:.1f} "
                  f"(return {meta['eval_return_mean']:.1f}), {args.zoo_dir / spec.source_name / 'meta.json'}",
                  flush=True)
        return
    for spec in specs:
        if args.zoo and is_done(args.zoo_dir, spec):
            print(f"{spec.source_name}: done, skipping", flush=True)
            continue
        if args.restart:
            shutil.rmtree(args.runs_dir / spec.source_name, ignore_errors=True)
        else:
            unpark(args.runs_dir, parked_dir, spec)
        print(f"{spec.source_name}: training {spec.algo} for {spec.steps} steps", flush=True)
        meta = train_source(spec, zoo_dir=args.zoo_dir, runs_dir=args.runs_dir,
                            eval_every=args.eval_every or DEFAULT_EVAL_EVERY,
                            eval_episodes=args.eval_episodes or DEFAULT_EVAL_EPISODES,
                            checkpoint_every=args.checkpoint_every, device=args.device,
                            extra_meta={"command": manifest_command(args.manifest, spec)} if args.zoo else None)
        shutil.rmtree(parked_dir / spec.source_name, ignore_errors=True)
        print(f"{spec.source_name}: {meta['steps']} steps, return {meta['eval_return_mean']:.1f} "
              f"± {meta['eval_return_std']:.1f} (random {meta['random_return_mean']:.1f}), "
              f"saved to {args.zoo_dir / spec.source_name}", flush=True)


if __name__ == "__main__":
    main()
