"""What a study says while it runs: its plan with time and disk estimates, the progress line, and where it
stopped."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from zoo_rl.files import CHECKPOINT, FINAL_EVALUATION, PROGRESS, RANKING, RANKING_PARTIAL, RESULT, STATUS
from zoo_rl.study.config import RunJob, StudyConfig, whole_policy
from zoo_rl.study.cores import describe_split
from zoo_rl.study.methods import ZOO_GATES, kickstart_teachers, zoo_options
from zoo_rl.study.tables import parallel_runs


#: Training cost per agent step of each method relative to scratch's, for estimates before a study has
#: measured its own: the ratios of scratch's steps/s to each method's in the Pong study with the strong zoo
#: (``timesteps_per_second`` in ``results/pong-100k-strong/results.csv``, all runs two at a time; ``python
#: experiments/publish.py results/pong-100k-strong --cost`` prints the minutes a run).
RELATIVE_COST = {"scratch": 1.0, "finetune": 1.0, "uniform": 1.3, "zoo-lite": 1.5, "zoo": 2.6, "ensemble": 1.9,
                 "kickstart": 1.2}


#: What distilling from teachers adds to a zoo method's cost (``<zoo method>+kickstart``): the teachers' forward
#: passes on every minibatch (the kickstarted ranked start against the ranked start in the same study).
KICKSTART_EXTRA_COST = 0.35


#: Scratch's agent steps per second in one single-thread process alone on the machine, for estimates before
#: any run has finished: scratch's 283 steps/s beside one other run in ``results/pong-100k-strong`` (an AMD EPYC
#: with AVX-512), over the speed-up of two runs (:func:`parallel_speedup`). A CPU without AVX-512 is slower.
REFERENCE_STEPS_PER_SECOND = 420.0


#: Per target family other than Atari's (whose numbers are :data:`RELATIVE_COST` and
#: :data:`REFERENCE_STEPS_PER_SECOND`): scratch's steps/s alone on the machine and each method's cost relative to
#: scratch, with the family's own networks and algorithm. Whole-policy zoo layers merge every layer of the policy
#: (with alignments, about K * O * O * I multiply-adds a layer), so against a small MLP they cost far more than a
#: zoo extractor does against NatureCNN. ``classic`` (SAC, 64x64 on Pendulum): ``timesteps_per_second`` in
#: ``results/pendulum-g12-sac-10k/results.csv`` (scratch 167 beside one other run; zoo-lite is the mean of its four
#: variants). ``mujoco`` (PPO, 256x256 on HalfCheetah): zoo-lite from ``results/gate-choice-halfcheetah`` (103
#: steps/s beside one other run) against the plain runs of ``mujoco:halfcheetah+friction=0.8+mass=1.25`` (scratch and
#: the fine-tunes, 650 beside one other; ``python benchmarks/bench_zoo_policy.py --algo ppo`` gives the same ratio
#: within 10%); uniform and the per-sample zoo take their ratio to zoo-lite from the classic family's. Methods a
#: family does not list cost as on Atari.
FAMILY_COSTS: dict[str, tuple[float, dict[str, float]]] = {
    "classic": (248.0, {"scratch": 1.0, "finetune": 1.0, "uniform": 3.6, "zoo-lite": 3.6, "zoo": 8.0}),
    "mujoco": (960.0, {"scratch": 1.0, "finetune": 1.0, "uniform": 6.3, "zoo-lite": 6.3, "zoo": 14.0}),
}


#: Agent steps per second of the source ranking (a policy playing the target on 8 gym environments), for its
#: ETA before it has measured its own: the committed zoo's 5 sources (6 plays of 10k steps, the random policy's
#: included) take about 1-2 minutes on two cores.
REFERENCE_RANKING_STEPS_PER_SECOND = 600.0


_NATURE_PARAMS = 8_224 + 32_832 + 36_928 + 1_606_144


_ALIGN_PARAMS = {True: 32 ** 2 + 64 ** 2 * 2 + 512 ** 2, "conv": 32 ** 2 + 64 ** 2 * 2, False: 0}


def network_size(zoo: list[str], whole: bool) -> tuple[int, dict]:
    """The parameters a study transfers per source, and its alignments' under each ``align`` option: NatureCNN's
    for an extractor zoo; for a whole-policy zoo, the first source's online networks (every ``Linear`` aligned by
    an O x O matrix, ``Conv2d`` ones too unless ``align="conv"`` leaves the linear ones out)."""
    if not (zoo and whole):
        return _NATURE_PARAMS, _ALIGN_PARAMS
    from zoo_rl.policy_sources import load_policy_source

    state = load_policy_source(zoo[0]).state
    weights = [t for key, t in state.items() if key.endswith("weight") and t.dim() >= 2]
    conv = sum(t.shape[0] ** 2 for t in weights if t.dim() == 4)
    return sum(t.numel() for t in state.values()), {True: sum(t.shape[0] ** 2 for t in weights), "conv": conv,
                                                     False: 0}


def run_bytes(method: str, n_sources: int, size: tuple[int, dict] = (_NATURE_PARAMS, _ALIGN_PARAMS)) -> int:
    """About the size of a finished run on disk: its final model (weights and Adam's two moments, 4 bytes
    each) for a network of ``size`` (:func:`network_size`); the logs are small. A run in training holds a
    checkpoint of the same size besides."""
    params, align_params = size
    base = method.partition(":")[0]
    if base in ZOO_GATES:
        align = zoo_options(method).get("align", True)
        return 12 * n_sources * (params + align_params[align])
    if base in ("ensemble", "multipolar"):  # frozen sources (weights only) and a trained head or residual
        return 4 * n_sources * params + (12 * 600 * n_sources if base == "ensemble" else 12 * params)
    return 12 * params


def _run_state(job: RunJob) -> tuple[str, int]:
    """``("done", steps)``, ``("partial", step of its checkpoint)`` or ``("to do", 0)``; a run trained to the end
    whose final games are not played yet is partial at its last step."""
    if (job.run_dir / RESULT).is_file():
        return "done", job.study.steps
    status = job.run_dir / STATUS
    if (job.run_dir / CHECKPOINT).is_file() and status.is_file():
        try:
            return "partial", int(json.loads(status.read_text())["num_timesteps"])
        except (json.JSONDecodeError, KeyError, ValueError):
            pass
    return "to do", 0


def relative_cost(method: str, family: str = "atari") -> float:
    """The cost per agent step of a study method relative to scratch's on a target of ``family``: its base's
    (``zoo-lite`` of ``zoo-lite:ranked``) in :data:`FAMILY_COSTS`, else in :data:`RELATIVE_COST`, plus
    :data:`KICKSTART_EXTRA_COST` where a zoo method is also kickstarted."""
    base = method.partition(":")[0]
    extra = KICKSTART_EXTRA_COST if base != "kickstart" and kickstart_teachers(method) is not None else 0.0
    family_cost = FAMILY_COSTS.get(family, (0.0, {}))[1]
    return family_cost.get(base, RELATIVE_COST.get(base, 1.0)) + extra


def reference_steps_per_second(family: str) -> float:
    """Scratch's steps/s alone on the machine on a target of ``family``, before a study has measured its own."""
    return FAMILY_COSTS.get(family, (REFERENCE_STEPS_PER_SECOND, {}))[0]


def method_seconds_per_step(jobs: list[RunJob]) -> dict[str, float]:
    """Seconds per agent step of each method of ``jobs``, for one run alone on the machine: measured by the
    study's finished runs where there are any (their ``timesteps_per_second`` times the runs that shared the
    machine, at most one per core, over the speed-up those runs made together: :func:`parallel_speedup`), else
    scaled from the measured methods (or :func:`reference_steps_per_second` of the target's family) by
    :func:`relative_cost`."""
    measured: dict[str, list[float]] = {}
    for job in jobs:
        path = job.run_dir / RESULT
        if path.is_file():
            row = json.loads(path.read_text())
            rate = float(row.get("timesteps_per_second") or 0)
            if rate > 0:
                # runs beyond the cores are read as standing by (a process waiting for a free run registers)
                shared = min(parallel_runs(job.study.out, job.method, job.seed), os.cpu_count() or 1)
                alone = rate * shared / parallel_speedup(shared)
                measured.setdefault(job.method, []).append(1.0 / alone)
    family = jobs[0].task.family if jobs else "atari"
    cost = {j.method: relative_cost(j.method, family) for j in jobs}
    scratch_equivalent = [np.mean(v) / cost[m] for m, v in measured.items()]
    unit = float(np.mean(scratch_equivalent)) if scratch_equivalent else 1.0 / reference_steps_per_second(family)
    return {m: float(np.mean(measured[m])) if m in measured else unit * cost[m] for m in cost}


def parallel_speedup(workers: int) -> float:
    """Machine throughput of ``workers`` single-thread runs against one run alone: each core past the first
    adds about a third of a run (the emulators and memory are shared; on 2 cores two single-thread runs made
    1.28-1.59x the steps/s of one two-thread run, 1.35x for the project pipeline: benchmarks/README.md); runs
    beyond this machine's cores add nothing."""
    return 1.0 + 0.35 * (max(1, min(workers, os.cpu_count() or 1)) - 1)


def ranking_plan(study: StudyConfig, jobs: list[RunJob]) -> str | None:
    """The plan's line about the source ranking (``None`` where the study needs none or has it already)."""
    from zoo_rl.study.config import source_names
    from zoo_rl.study.runs import kept_scores, read_ranking

    zoo = jobs[0].zoo
    if not zoo or all(j.method == "scratch" for j in jobs):
        return None
    out = Path(study.out)
    names = source_names(zoo, jobs[0].task)
    if (out / RANKING).is_file() and read_ranking(out / RANKING, names)[0] is not None:
        return None
    kept = kept_scores(out / RANKING_PARTIAL, jobs[0].task, study.rank_steps, names, None)
    kept_count = 0 if kept is None else len(kept)
    plays = len(names) - kept_count + 1  # and the random policy's
    seconds = plays * study.rank_steps / REFERENCE_RANKING_STEPS_PER_SECOND
    return (f"ranking first: {len(names)} sources x {study.rank_steps:,} agent steps (and a random policy), about "
            f"{format_duration(seconds)}" + (f"; {kept_count} scored before, kept" if kept_count else "")
            + f" -> {out / RANKING}")


def format_duration(seconds: float) -> str:
    """``1 h 52 min``, ``7 min``, ``40 s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"


def describe_plan(study: StudyConfig, jobs: list[RunJob]) -> str:
    """The plan of a study in a few lines: target, zoo, methods x seeds = runs, steps, output folder, what is
    done, partial and to do, and estimates of time and disk."""
    task, zoo = jobs[0].task, jobs[0].zoo
    methods = list(dict.fromkeys(j.method for j in jobs))
    states = {(j.method, j.seed): _run_state(j) for j in jobs}
    done = [k for k, (state, _) in states.items() if state == "done"]
    partial = {k: step for k, (state, step) in states.items() if state == "partial"}
    seconds = method_seconds_per_step(jobs)
    remaining = sum(seconds[m] * (study.steps - step) for (m, _), (state, step) in states.items() if state != "done")
    if study.final_episodes > 0:  # the final games, about a minute a run
        remaining += 60.0 * (len(jobs) - len(done))
    workers = 1 if study.launcher == "ray" else int(study.workers or 1)
    n_sources = len(zoo)
    size = network_size(zoo, whole_policy(task))
    disk = sum(run_bytes(m, n_sources, size) for m in methods) * study.seeds
    lines = [
        f"Transfer study: {study.algo.upper()} on {task.slug} ({task.env_id}), {study.steps:,} agent steps per run, "
        f"Adam at {study.lr:g}",
        "zoo: " + (f"{n_sources} sources: " + ", ".join(Path(z).name.rstrip("/") for z in zoo) if zoo else "none"),
        f"{len(methods)} methods x {study.seeds} seeds = {len(jobs)} runs -> {study.out}",
        "  methods: " + ", ".join(methods),
        f"done {len(done)}, partial {len(partial)}, to do {len(jobs) - len(done) - len(partial)}"
        + "".join(f"\n  resumes {m} seed {s} from step {step:,}" if step < study.steps else
                  f"\n  {m} seed {s} is trained to step {step:,}: it plays its final games" for (m, s), step in
                  partial.items()),
        f"estimate: about {format_duration(remaining / parallel_speedup(workers))} of training "
        f"({workers} worker{'s' if workers > 1 else ''}; from "
        + ("this study's finished runs" if done else "reference speeds, refined as runs finish")
        + f"), about {_gigabytes(disk)} on disk when finished",
        describe_split(workers, study.launcher, runs_left=len(jobs) - len(done)),
    ]
    ranking = ranking_plan(study, jobs)
    if ranking:
        lines.append(ranking)
    lines.append("Ctrl-C stops it at any moment; the same command resumes it.")
    return "\n".join(lines)


class RankingProgress:
    """The study's progress line while the sources are ranked: sources scored, the policy playing and its steps,
    and an ETA (from the steps played in this process, or :data:`REFERENCE_RANKING_STEPS_PER_SECOND` before a
    few seconds of them). Every source is counted as played, an upper bound: a source without an action head
    for the target is scored by the probe alone."""

    def __init__(self, slug: str, sources: int, steps: int, kept: int = 0, enabled: bool = True) -> None:
        self.slug, self.sources, self.steps = slug, sources, steps
        self.scored = kept
        self.plays = sources - kept + 1  # and the random policy
        self.finished_plays = 0
        self.current: tuple[str, int] | None = None
        self.started = time.monotonic()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, bar_format="{percentage:3.0f}%|{bar:20}| {desc}", dynamic_ncols=True,
                            leave=False)

    def played(self) -> int:
        return self.finished_plays * self.steps + (self.current[1] if self.current else 0)

    def eta(self) -> float:
        elapsed, played = time.monotonic() - self.started, self.played()
        rate = played / elapsed if played > 0 and elapsed >= 5 else REFERENCE_RANKING_STEPS_PER_SECOND
        return max(0, self.plays * self.steps - played) / max(rate, 1e-9)

    def update(self, name: str, done: int, total: int) -> None:
        """A policy reports its steps (``rank_sources``'s ``on_play``)."""
        if self.current is not None and self.current[0] != name:
            self.finished_plays += 1
        self.current = (name, int(done))
        self.refresh()

    def source_scored(self, row: dict | None = None) -> None:
        self.scored += 1
        self.refresh()

    def description(self) -> str:
        playing = f" | {self.current[0]} at {self.current[1]:,}/{self.steps:,} steps" if self.current else ""
        return (f"{self.slug}: ranking the sources, {self.scored}/{self.sources} scored{playing} "
                f"| ETA {format_duration(self.eta())}")

    def refresh(self) -> None:
        if self.bar is None:
            return
        self.bar.n = int(1000 * min(1.0, self.played() / max(1, self.plays * self.steps)))
        self.bar.set_description_str(self.description(), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StudyProgress:
    """The study's progress line: done share, the runs in training and their steps, and an ETA.

    Work is counted in seconds of training (steps times each method's :func:`method_seconds_per_step`),
    so the ETA allows for the cost of every remaining method; the rate is measured on what this process
    has trained since it started (finished runs skipped, and steps a resumed run trains again after its
    checkpoint, do not count).
    """

    def __init__(self, study: StudyConfig, jobs: list[RunJob], enabled: bool = True) -> None:
        self.jobs, self.study = jobs, study
        self.seconds = method_seconds_per_step(jobs)
        self.total = sum(self.seconds[j.method] * study.steps for j in jobs)
        states = {(j.method, j.seed): _run_state(j) for j in jobs}
        self.start_steps = {key: step for key, (_, step) in states.items()}
        self.steps = dict(self.start_steps)
        # Finished runs: their final games played (result.json), not merely trained to the last step.
        self.done = {key for key, (state, _) in states.items() if state == "done"}
        self.started = time.monotonic()
        self.running: dict[tuple[str, int], int] = {}
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, bar_format="{percentage:3.0f}%|{bar:20}| {desc}", dynamic_ncols=True)
        self.refresh()

    def work(self, steps: dict[tuple[str, int], int]) -> float:
        return sum(self.seconds[m] * n for (m, _), n in steps.items())

    def update(self, job: RunJob, steps: int) -> None:
        """One run reports its step count (from its own process, or read from its progress.json)."""
        key = (job.method, job.seed)
        self.steps[key] = min(int(steps), self.study.steps)
        self.running[key] = self.steps[key]
        self.refresh()

    def _mark_done(self, key: tuple[str, int]) -> None:
        self.steps[key] = self.study.steps
        self.running.pop(key, None)
        self.done.add(key)

    def _finished_elsewhere(self) -> None:
        """Count the runs whose result.json another process wrote (its final games played)."""
        for job in self.jobs:
            key = (job.method, job.seed)
            if key not in self.done and (job.run_dir / RESULT).is_file():
                self._mark_done(key)

    def poll(self) -> None:
        """Read every unfinished run's progress.json (runs in other processes)."""
        self._finished_elsewhere()
        for job in self.jobs:
            key = (job.method, job.seed)
            if key in self.done:
                continue
            path = job.run_dir / PROGRESS
            if path.is_file():
                try:
                    steps = int(json.loads(path.read_text())["steps"])
                except (json.JSONDecodeError, KeyError, ValueError, OSError):
                    continue
                if steps != self.steps[key] and path.stat().st_mtime >= time.time() - 600:
                    self.steps[key] = min(steps, self.study.steps)
                    self.running[key] = self.steps[key]
        self.refresh()

    def finished(self, job: RunJob) -> None:
        """``job`` has finished here; so may have others in another process on the same study (two processes
        with one worker each): those are counted too (their result.json), so that each line counts every
        finished run, not only its own process's."""
        self._mark_done((job.method, job.seed))
        self._finished_elsewhere()
        self.refresh()

    def describe(self) -> str:
        """The progress line's text: finished runs (final games played), each run in training at its step or
        playing its final games, and the ETA."""
        running = ", ".join(f"{m} seed {s} " + (f"at {n:,}" if n < self.study.steps else "playing its final games")
                            for (m, s), n in self.running.items() if (m, s) not in self.done)
        return (f"{self.jobs[0].task.slug}: {len(self.done)}/{len(self.jobs)} runs" + (f" | {running}" if running else "")
                + f" | ETA {format_duration(self.eta())}")

    def eta(self) -> float:
        # Only forward progress since this process started counts; a run resumed from its checkpoint
        # starts at the checkpoint's step, so replayed steps are not counted twice.
        gained = sum(self.seconds[method] * max(0, steps - self.start_steps[(method, seed)])
                     for (method, seed), steps in self.steps.items())
        elapsed = time.monotonic() - self.started
        remaining = self.total - self.work(self.steps)
        if gained <= 0 or elapsed < 20:
            workers = 1 if self.study.launcher == "ray" else self.study.workers
            return remaining / parallel_speedup(workers)
        return remaining * elapsed / gained

    def refresh(self) -> None:
        if self.bar is None:
            return
        self.bar.n = int(1000 * self.work(self.steps) / max(self.total, 1e-9))
        self.bar.set_description_str(self.describe(), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: What a stopped study says it was doing, by phase (:func:`stop_message`).
PHASES = {"plan": "while planning", "ranking": "while ranking the sources", "training": "",
          "tables": "while writing the tables"}


def stop_message(study: StudyConfig, jobs: list[RunJob], phase: str = "training", detail: str = "",
                 reason: str = "", first: str = "Run") -> str:
    """What a stopped study says: the phase it stopped in (:data:`PHASES`, with ``detail``), why where it is not
    a signal (``reason``), where each unfinished run stands, and that the same command resumes it (``first``:
    the sentence's start, "Free some space, then run" after a full disk)."""
    where = PHASES.get(phase, "")
    head = ("Stopped" + (f" {where}" if where else "") + "".join(f" ({x})" for x in (detail, reason) if x))
    if not jobs:
        return f"{head}, before any training. {first} the same command to start the study."
    done = sum(1 for j in jobs if (j.run_dir / RESULT).is_file())
    partial = [(j, step) for j in jobs for state, step in [_run_state(j)] if state == "partial"]
    states = "; ".join(
        f"{j.method} seed {j.seed} trained to step {step:,}, its final games to play"
        if step >= study.steps and study.final_episodes > 0 and not (j.run_dir / FINAL_EVALUATION).is_file()
        else f"{j.method} seed {j.seed} at its checkpoint of step {step:,}" for j, step in partial)
    resume = {
        "plan": "",
        "ranking": ": the sources scored are kept and only the others are played, then the runs train",
        "tables": ": the tables are rewritten from the finished runs, each kept in its result.json",
    }.get(phase, "")
    if partial:
        resume += ((", and " if resume else ": ") + "each interrupted run continues from its last checkpoint and "
                   f"trains at most {study.eval_every:,} steps again")
    return f"{head}: {done}/{len(jobs)} runs finished" + (f"; {states}" if states else "") + \
        f". {first} the same command to resume{resume}."
