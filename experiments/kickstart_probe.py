"""Kickstarting one level down on a continuous-control target: how close does the student get to what it distils,
and how well does that play?

    python experiments/kickstart_probe.py --target mujoco:halfcheetah+friction=0.8+mass=1.25 --zoo agents/zoo-mujoco \\
        --ranking results/halfcheetah-friction0.8-mass1.25-100k/ranking.csv \\
        --teachers top,all,halfcheetah-friction0.4 --schedules decay,constant \\
        --out results/halfcheetah-friction0.8-mass1.25-kickstart-probe

Two tables, written to ``--out`` as CSV and Markdown:

- **What the student is taught** (``teachers.csv``): each teacher's own return on the target with deterministic
  actions (its mean), and with Gaussian noise of the given standard deviations added to that mean; and the same
  for the *weighted teacher mean* ``sum_k w_k mu_k(x)`` of every source with the ranking's weights, which is where
  ``kickstart:all``'s distillation term pulls the student's mean (for Gaussians with the student's one standard
  deviation, ``sum_k w_k KL(teacher_k || student)`` is smallest at that mean). The noise columns say how much a
  policy's return depends on acting exactly as it does: a student is never an exact copy.
- **What the student learns** (``probe.csv``): a kickstarted student trained as its study trains it (the study's
  hyperparameters, schedule and teachers, :func:`zoo_rl.study.build_model`), measured every ``--every`` steps on
  the states of its own deterministic episodes: its return, the distillation weight ``lambda(t)``, its action
  standard deviation, the root-mean-square distance of its mean from each teacher's mean and from the weighted
  teacher mean of the teachers it distils, and the distillation term (the weighted KL) on those states; and
  ``takeover_return``: the return that weighted teacher mean (the teacher itself, for one teacher) collects from
  step ``--takeover`` of an episode on after the student acted until then, beside the teacher table's
  ``return_after`` (the same policy from its own state at that step). A student whose states its teachers
  cannot recover from learns from labels that do not lead back to the teachers' play: distillation on the
  student's own states (as DAgger) assumes that they can.

Teachers: ``top`` (the study's ``kickstart``), ``all`` (``kickstart:all``) or a source's name (that source
alone). Schedules: ``decay`` (the method's default: from ``kcoef`` to 0 over the run) or ``constant`` (the
starting weight held for the whole run: distillation that never hands over to the reward, which tells whether
the student could copy its teacher at all). Whole-policy targets with continuous actions only (MuJoCo): a
discrete student's distance to its teachers is not a distance between means.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from envs.tasks import Task, make_env
from zoo_rl.files import RANKING, atomic_write_bytes, write_csv_atomic
from zoo_rl.kickstart import Teacher, distillation_kl, load_any_teacher
from zoo_rl.study import StudyConfig, build_model, plan
from zoo_rl.study.config import source_names, whole_policy
from zoo_rl.study.runs import run_hyperparams, run_spec, study_teachers
from zoo_rl.training import EVAL_SEED_OFFSET, open_run, train_run, vec_normalize_kwargs

SCHEDULES = ("decay", "constant")
TEACHER_COLUMNS = ["policy", "noise", "return", "return_std", "return_after", "return_after_random"]
PROBE_COLUMNS = ["variant", "step", "weight", "return", "return_std", "student_std", "rms_to_target", "kl",
                 "takeover_return"]


def play(act: Callable[[np.ndarray], np.ndarray], task: Task, episodes: int, seed: int,
         then: Callable[[np.ndarray], np.ndarray] | None = None,
         switch: int = 0) -> tuple[list[float], list[float], np.ndarray]:
    """Play ``episodes`` episodes of ``task`` (one environment, the evaluation wrappers, seed ``seed``) with
    ``act(observations (1, D)) -> actions (1, A)``, handing over to ``then`` (if given) from step ``switch`` of
    each episode on. Returns the episode returns, the returns collected from step ``switch`` on, and every
    observation acted on."""
    env = make_env(task, 1, seed=seed, backend="gym")
    returns, rests, seen = [], [], []
    try:
        obs, total, rest, step = env.reset(), 0.0, 0.0, 0
        while len(returns) < episodes:
            seen.append(obs[0].copy())
            policy = then if then is not None and step >= switch else act
            obs, reward, done, _ = env.step(policy(obs))
            total += float(reward[0])
            rest += float(reward[0]) if step >= switch else 0.0
            step += 1
            if done[0]:
                returns.append(total)
                rests.append(rest)
                total, rest, step = 0.0, 0.0, 0
    finally:
        env.close()
    return returns, rests, np.asarray(seen, dtype=np.float32)


def weighted_mean(teachers: Sequence[Teacher], weights: Sequence[float], obs: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k mu_k(obs)`` of continuous teachers: the mean that ``sum_k w_k KL(teacher_k || student)`` is
    smallest at."""
    return sum(w * t.gaussian(obs)[0] for w, t in zip(weights, teachers))


def acting(mean: Callable[[torch.Tensor], torch.Tensor], action_space: spaces.Box, noise: float = 0.0,
           rng: np.random.Generator | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A policy that acts with ``mean(obs)`` plus Gaussian noise of standard deviation ``noise`` (drawn from
    ``rng``, needed when ``noise > 0``), clipped to the action space as SB3 clips its actions."""
    if noise > 0 and rng is None:
        raise ValueError("noise > 0 needs the generator that draws it (rng).")

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            action = mean(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        if noise > 0:
            action = action + rng.normal(0.0, noise, size=action.shape)
        return np.clip(action, action_space.low, action_space.high)
    return act


def make_action_space(task: Task) -> spaces.Space:
    """The action space of ``task``'s environments."""
    env = make_env(task, 1, seed=0, backend="gym")
    try:
        return env.action_space
    finally:
        env.close()


def random_acting(action_space: spaces.Box, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Actions drawn uniformly from the action box (play that follows no policy), from a generator seeded with
    ``seed``."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(action_space.low, action_space.high, size=(len(obs), *action_space.shape))


def teacher_table(task: Task, teachers: Sequence[Teacher], weights: Sequence[float], noises: Sequence[float],
                  episodes: int, seed: int, switch: int) -> pd.DataFrame:
    """The first table of the module docstring; ``return_after``: the mean return collected from step ``switch``
    of each episode on (what :class:`Probe`'s ``takeover_return`` compares with); ``return_after_random``: the
    same policy's return from step ``switch`` on after uniform random actions until then. A teacher that
    collects its own ``return_after`` from a random policy's states recovers from states it did not lead to,
    which distillation on a student's states assumes."""
    action_space = make_action_space(task)
    policies: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
        (t.name, (lambda t: lambda x: t.gaussian(x)[0])(t)) for t in teachers]
    policies.append(("weighted teacher mean", lambda x: weighted_mean(teachers, weights, x)))
    rows = []
    for name, mean in policies:
        for noise in [0.0, *noises]:
            rng = np.random.default_rng(seed)
            returns, rests, _ = play(acting(mean, action_space, noise, rng), task, episodes, seed, switch=switch)
            rng = np.random.default_rng(seed)
            _, recovered, _ = play(random_acting(action_space, seed), task, episodes, seed,
                                   then=acting(mean, action_space, noise, rng), switch=switch)
            rows.append(dict(policy=name, noise=noise, **{"return": float(np.mean(returns))},
                             return_std=float(np.std(returns)), return_after=float(np.mean(rests)),
                             return_after_random=float(np.mean(recovered))))
    return pd.DataFrame(rows, columns=TEACHER_COLUMNS)


class Probe(BaseCallback):
    """Measures a kickstarted student every ``every`` steps (and at the start and the end): the second table of
    the module docstring, one row per measurement appended to ``rows``."""

    def __init__(self, variant: str, task: Task, every: int, episodes: int, seed: int, rows: list[dict],
                 switch: int) -> None:
        super().__init__()
        self.variant, self.task, self.every, self.episodes, self.seed = variant, task, every, episodes, seed
        self.switch = switch
        self.rows = rows
        self.next = 0

    def measure(self) -> None:
        model = self.model
        student = lambda obs: model.predict(obs, deterministic=True)[0]  # noqa: E731
        returns, _, seen = play(student, self.task, self.episodes, self.seed)
        box = model.action_space
        target_acts = acting(lambda x: weighted_mean(model.teachers, model.teacher_weights, model._teacher_inputs(x)),
                             box)
        _, takeover, _ = play(student, self.task, self.episodes, self.seed, then=target_acts, switch=self.switch)
        obs = torch.as_tensor(seen, device=model.device)
        with torch.no_grad():
            dist = model.policy.get_distribution(obs)
            x = model._teacher_inputs(obs)
            target = weighted_mean(model.teachers, model.teacher_weights, x)
            mu = dist.distribution.loc
            kl = distillation_kl(dist, [t.output(x) for t in model.teachers], model.teacher_weights)
        self.rows.append(dict(variant=self.variant, step=int(model.num_timesteps), weight=model.kickstart_weight(),
                              **{"return": float(np.mean(returns)), "return_std": float(np.std(returns))},
                              student_std=float(dist.distribution.scale.mean()),
                              rms_to_target=float((mu - target).pow(2).mean().sqrt()),
                              kl=float(kl.mean()), takeover_return=float(np.mean(takeover))))
        self.next = int(model.num_timesteps) + self.every

    def _on_training_start(self) -> None:
        self.measure()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next:
            self.measure()
        return True

    def _on_training_end(self) -> None:
        if not self.rows or self.rows[-1]["step"] != self.model.num_timesteps:
            self.measure()


def probe_student(config: StudyConfig, teachers: str, schedule: str, every: int, episodes: int,
                  seed: int, switch: int = 300) -> list[dict]:
    """Train one kickstarted student (``config.methods`` is ignored) and return its :class:`Probe` rows.

    :raises ValueError: an unknown schedule, or a source name that is not in the zoo.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: use one of {SCHEDULES}.")
    method = "kickstart:all" if teachers == "all" else "kickstart"
    config = replace(config, methods=[method], seeds=1, first_seed=seed)
    job = plan(config)[0]
    names = source_names(job.zoo, job.task)
    if teachers not in ("top", "all") and teachers not in names:
        raise ValueError(f"teacher {teachers!r}: use top, all or a source of the zoo {names}.")
    spec = run_spec(job)
    variant = f"{teachers}+{schedule}"
    run_dir = Path(config.out) / variant / f"seed{seed}"
    if teachers in ("top", "all"):
        chosen = study_teachers(job, teachers)
    else:
        env = make_env(job.task, 1, seed=0, backend="gym")
        try:
            chosen = [load_any_teacher(job.zoo[names.index(teachers)], env, teachers)], None
        finally:
            env.close()

    def prepare(model: Any) -> None:
        model.set_teachers(*chosen)
        if schedule == "constant":  # lambda(t) = kcoef at every step (the instance's method shadows the class's)
            model.kickstart_weight = lambda: model.kickstart_coef

    spec = replace(spec, run_dir=run_dir, prepare=prepare, tensorboard_log=None, eval_every=0)
    params, n_envs = run_hyperparams(job)
    envs = open_run(run_dir, job.task, n_envs=n_envs, seed=seed, backend=config.env_backend, eval_episodes=1,
                    record={"method": method, "probe": variant}, normalize=vec_normalize_kwargs(params))
    rows: list[dict] = []
    try:
        if envs.resumed:
            raise ValueError(f"{run_dir} holds a checkpoint: the probe measures a student from its start; give "
                             "another --out.")
        model = build_model(job, envs.env, spec)
        train_run(spec, envs.env, None, callbacks=[Probe(variant, job.task, every, episodes,
                                                         seed + EVAL_SEED_OFFSET, rows, switch)], model=model)
    finally:
        envs.close()
    return rows


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    lines = [head, "| " + " | ".join("---" for _ in table.columns) + " |"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.{digits}g}" if isinstance(v, float) and abs(v) < 100 else
                                        f"{v:.0f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--zoo", nargs="+", default=None)
    parser.add_argument("--ranking", type=Path, default=None,
                        help="a study's ranking.csv (default: rank the zoo first)")
    parser.add_argument("--teachers", default="top,all", help="comma-separated: top, all, or source names")
    parser.add_argument("--schedules", default="decay", help="comma-separated: decay, constant")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000, help="steps between measurements")
    parser.add_argument("--episodes", type=int, default=3, help="deterministic episodes per measurement")
    parser.add_argument("--noise", default="0.03,0.1", help="comma-separated noise levels of the teacher table")
    parser.add_argument("--takeover", type=int, default=300,
                        help="step of an episode at which what the student distils takes over from it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-only", action="store_true",
                        help="write the teacher table (teachers.csv) alone: no student is trained")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    teachers = [t for t in args.teachers.split(",") if t]
    schedules = [s for s in args.schedules.split(",") if s]
    noises = [float(n) for n in args.noise.split(",") if n]
    bad = [s for s in schedules if s not in SCHEDULES]
    if bad or not teachers or not schedules:
        sys.exit(f"error: --teachers needs at least one of top, all or a source name; --schedules one of {SCHEDULES}"
                 f"{f' (got {bad})' if bad else ''}.")
    if (args.out / "probe.csv").exists() or (args.out / "teachers.csv").exists():
        sys.exit(f"error: {args.out} already holds a probe; give another --out.")
    with tempfile.TemporaryDirectory() as folder:
        if args.ranking is not None:
            if not args.ranking.is_file():
                sys.exit(f"error: {args.ranking} does not exist: give a study's ranking.csv, or leave --ranking out.")
            shutil.copy(args.ranking, Path(folder) / RANKING)
        config = StudyConfig(target=args.target, zoo=args.zoo, methods=["kickstart"], seeds=1, steps=args.steps,
                             workers=1, out=Path(folder))
        job = plan(config)[0]
        if not whole_policy(job.task) or not isinstance(make_action_space(job.task), spaces.Box):
            sys.exit(f"error: {args.target}: the probe measures students with continuous actions on whole-policy "
                     "targets (MuJoCo); a discrete student's distance to its teachers is not a distance of means.")
        try:
            everyone, weights = study_teachers(job, "all")
            table = teacher_table(job.task, everyone, weights, noises, args.episodes, args.seed + EVAL_SEED_OFFSET,
                                  args.takeover)
            rows = []
            for teacher in [] if args.table_only else teachers:
                for schedule in schedules:
                    rows += probe_student(config, teacher, schedule, args.every, args.episodes, args.seed,
                                          args.takeover)
                    print(f"{teacher}+{schedule}: {rows[-1]['return']:.0f} at {rows[-1]['step']:,} steps", flush=True)
        except ValueError as exc:
            sys.exit(f"error: {exc}")
    probe = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(table, args.out / "teachers.csv")
    if not args.table_only:
        write_csv_atomic(probe, args.out / "probe.csv")
    command = f"python experiments/kickstart_probe.py {' '.join(sys.argv[1:])}"
    text = (f"Kickstarting one level down (`{command}`; seed {args.seed}, {args.episodes} deterministic episodes "
            f"per row).\n\nWhat the student is taught (noise: standard deviation added to the mean action):\n\n"
            f"{markdown(table)}\n\n(return_after: the return from step {args.takeover} of each episode on; "
            f"return_after_random: the same after uniform random actions until step {args.takeover}.)\n\n")
    if not args.table_only:
        text += ("What the student learns (on the states of its own episodes; rms_to_target: distance of its mean "
                 "from the weighted mean of the teachers it distils; takeover_return: what that weighted mean "
                 f"collects from step {args.takeover} on, after the student acted until then):\n\n"
                 f"{markdown(probe)}\n")
    atomic_write_bytes(args.out / "probe.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
