"""A study's configuration (:class:`StudyConfig`), its zoo, and its plan: the runs it trains (:func:`plan`)."""

from __future__ import annotations

import argparse
import json
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from envs.atari import BACKENDS
from envs.tasks import Task, make_env, resolve
from zoo_rl.extractor import ZooExtractor, cached_zoo
from zoo_rl.files import (CONFIG, EVALUATIONS, FINAL_EVALUATION, RESULT, STATUS, STUDY, command_line,
                          write_json)
from zoo_rl.layers import DEFAULT_NORMALISATION, NORMALISATIONS
from zoo_rl.ranking import RANK_STEPS, image_task
from zoo_rl.sources import META_FILE, sha256_of
from zoo_rl.study.methods import (DEFAULT_METHODS, EXTRACTOR_ONLY, POLICY_DEFAULT_METHODS, POLICY_ONLY,
                                  expand_methods, extractor_kwargs, kickstart_teachers)
from zoo_rl.training import ALGOS, ON_POLICY


ROOT = Path(__file__).resolve().parents[2]
#: The Atari zoo a study uses when it names none: the strong zoo (sources trained until they play well,
#: docs/zoo.md). The 1M-step zoo stays at agents/zoo, where the studies made with it name it.
DEFAULT_ZOO_DIR = ROOT / "agents" / "zoo-strong"
#: The committed zoo of each task family: a target's default zoo is its own family's.
ZOO_DIRS = {"atari": DEFAULT_ZOO_DIR, "lab2d": ROOT / "agents" / "zoo-lab2d", "mujoco": ROOT / "agents" / "zoo-mujoco",
            "classic": ROOT / "agents" / "zoo-pendulum"}
#: Algorithms of continuous actions only: their studies need a state-vector target (image targets act discretely).
CONTINUOUS_ONLY = ("sac",)
#: How a study of a whole-policy target trains under VecNormalize: rewards normalised (as the RL Baselines3 Zoo's
#: MuJoCo settings do), observations raw, because the sources read raw observations (their own normalisation
#: is folded into their first layers at export) and scratch, fine-tunes and zoo methods must see the same inputs.
POLICY_STUDY_NORMALIZE = {"norm_obs": False, "norm_reward": True}
HYPERPARAMS_DIR = ROOT / "agents" / "hyperparams"
#: The learning rate of image studies: the Zoo-Tuning paper's RL setting (Adam at 1e-4).
PAPER_LR = 1e-4
#: Games of the final evaluation: the published protocol.
FINAL_EPISODES = 20


def _option(help: str, default: Any = MISSING, *, flag: str | None = None, type: Callable | None = None,
            choices: Sequence[str] | None = None, nargs: str | None = None, factory: Callable | None = None) -> Any:
    """A :class:`StudyConfig` field with its command-line option: the field's default and help text are the
    option's (:func:`add_study_arguments`); ``flag`` where the option's name is not the field's."""
    metadata = dict(help=help, flag=flag, type=type, choices=choices, nargs=nargs)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass
class StudyConfig:
    """One transfer study: every method x seed on one target. Each field is an option of
    ``experiments/transfer.py`` (``--eval-every`` for ``eval_every``), documented once, in its help text:
    ``python experiments/transfer.py --help`` lists them with their defaults."""

    target: str = _option("target: Atari short name (Pong) or full id (PongNoFrameskip-v4), or lab2d:<level>")
    mode: int | None = _option("ALE mode of the target (default: the game's)", None, type=int)
    difficulty: int | None = _option("ALE difficulty of the target (default: the game's)", None, type=int)
    zoo: list[str] | None = _option(
        "sources (source folders, SB3 zips, hub ids) or whole zoos (agents/zoo agents/zoo-lab2d: their members "
        "minus the target task's own source); default: the committed zoo of the target's family minus the "
        "target task's own source", None, nargs="+")
    methods: list[str] = _option("comma-separated methods; see below (state-vector targets: multipolar in the place "
                                 "of ensemble, with --algo ppo or a2c only)", type=_comma_list,
                                 factory=lambda: list(DEFAULT_METHODS))
    seeds: int = _option("seeds per method (first-seed .. first-seed+seeds-1)", 3)
    first_seed: int = _option("the first seed: more seeds of a published study in a folder of their own (e.g. "
                              "--first-seed 3 --seeds 3 trains seeds 3-5), pooled with it by experiments/compare.py", 0)
    algo: str = _option("SB3 algorithm: ppo, a2c, dqn, qrdqn or sac (continuous actions: e.g. classic:pendulum "
                        "targets with the zoo agents/zoo-pendulum)", "ppo")
    steps: int = _option("agent steps per run (100k: the Atari-100k budget)", 100_000)
    lr: float | None = _option("learning rate of the optimizer, constant (default: Adam at 1e-4, the paper's, for "
                               "image targets; the hyperparameter file's tuned rate for state-vector targets: MuJoCo "
                               "and classic control)", None, type=float)
    out: Path | None = _option("study folder (default: runs/transfer/<target>-<algo>)", None, type=Path)
    eval_every: int = _option("steps between evaluations (also the checkpoint interval)", 10_000)
    eval_episodes: int = _option("episodes per evaluation", 5)
    final_episodes: int = _option("new games the final model of each run plays; their mean is the run's final "
                                  "return (0: the last evaluation's mean instead)", FINAL_EPISODES)
    threshold: float | None = _option("return for steps-to-threshold (default: scratch's mean final return)", None,
                                      type=float)
    precision: str = _option("bf16: FastCnnPolicy (bf16 channels-last extractor where the CPU has native bf16); "
                             "fp32: plain CnnPolicy", "bf16", choices=("bf16", "fp32"))
    workers: int | None = _option(
        "runs trained at a time by the local launcher, each with cores/runs torch threads (default: one per core "
        "that other study processes on this machine leave free, at most the runs left: on 2 cores two single-thread "
        "runs train about 1.35x the steps/s of one two-thread run)", None, type=int)
    launcher: str = _option("local (this process, or a process pool with --workers) or ray", "local",
                            choices=("local", "ray"))
    ray_address: str | None = _option("Ray cluster address (default: start a local Ray)", None)
    n_envs: int | None = _option("environments per run (default: the algorithm's YAML)", None, type=int)
    env_backend: str = _option("Atari training environments: auto (ale-py's vector env where it applies), ale, or "
                               "gym (the RL Baselines3 Zoo wrappers; evaluations always use these). A run resumes "
                               "only with the backend it started with", "auto", choices=BACKENDS)
    normalisation: str | None = _option(
        "gate normalisation of zoo and zoo-lite where the method names none (zoo-lite:sigmoid does); default: the "
        f"library's ({DEFAULT_NORMALISATION}). A study folder continues only with the normalisation its runs were "
        "trained with", None, flag="--gate-normalisation", choices=NORMALISATIONS)
    rank_steps: int = _option("agent steps per source of the source ranking written to ranking.csv before "
                              "training (zoo_rl.ranking; the ranked and top<k> methods start from it)", RANK_STEPS)


def add_study_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """One option per :class:`StudyConfig` field, with the field's default and help text (``--target`` is
    required unless ``required`` is False)."""
    for f in fields(StudyConfig):
        meta = dict(f.metadata)
        flag = meta.pop("flag") or "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        kwargs = {k: v for k, v in meta.items() if v is not None}
        if "type" not in kwargs and isinstance(default, (int, float)) and not isinstance(default, bool):
            kwargs["type"] = type(default)
        if default is MISSING:
            parser.add_argument(flag, dest=f.name, required=required, **kwargs)
        else:
            shown = ",".join(default) if isinstance(default, list) else default
            parser.add_argument(flag, dest=f.name, default=default, **dict(kwargs, help=f"{kwargs['help']} "
                                                                                   f"(default: {shown})"
                                if shown is not None and "default:" not in kwargs["help"] else kwargs["help"]))


def study_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` of parsed :func:`add_study_arguments` options."""
    return StudyConfig(**{f.name: getattr(args, f.name) for f in fields(StudyConfig)})


@dataclass
class RunJob:
    """One (method, seed) run of a study; everything a worker process needs, picklable."""

    study: StudyConfig
    task: Task
    zoo: list[str]
    method: str
    seed: int

    @property
    def run_dir(self) -> Path:
        return run_path(self.study.out, self.method, self.seed)


def run_path(out: Path, method: str, seed: int) -> Path:
    """Folder of one run of the study in ``out`` (no colons in folder names: ``zoo-lite:sigmoid``
    lives in ``zoo-lite-sigmoid/seed0``)."""
    return Path(out) / method.replace(":", "-") / f"seed{seed}"


def write_study_json(study: StudyConfig, runs: int, sources: list[dict[str, str]] | None = None) -> None:
    """``study.json`` of a study folder: the resolved configuration, the command and, given ``sources``
    (:func:`zoo_record`), the sources its zoo methods train from (checked on every later call: :func:`check_zoo`).

    A folder trained by several commands (e.g. ablations added later with their own ``--methods``) keeps
    the record of every one: ``methods`` is the union in the order first asked for, ``commands`` every
    distinct command in order; ``command`` and ``runs`` (the runs it planned) are the latest command's.
    """
    path = Path(study.out) / STUDY
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        earlier = {}
    record = {**asdict(study), "out": str(study.out), "command": command_line(), "runs": runs}
    if sources is not None or "sources" in earlier:
        record["sources"] = sources if sources is not None else earlier["sources"]
    record["methods"] = list(dict.fromkeys([*earlier.get("methods", []), *record["methods"]]))
    before = earlier.get("commands", [earlier["command"]] if "command" in earlier else [])
    record["commands"] = list(dict.fromkeys([*before, record["command"]]))
    write_json(path, record)


def whole_policy(task: Task) -> bool:
    """Whether a study of ``task`` transfers whole policies (:func:`zoo_rl.zoo_policy`: every layer of an MLP policy,
    for state-vector targets: MuJoCo bodies and classic-control systems) rather than NatureCNN extractors
    (:class:`zoo_rl.ZooExtractor`, for image targets: Atari, Lab2D; :func:`zoo_rl.ranking.image_task`, which ranks
    the same two kinds of zoo)."""
    return not image_task(task)


#: The algorithms a kickstarted method can train with: Kickstarting's term in PPO's and A2C's updates
#: (:mod:`zoo_rl.kickstart`), QDagger's in DQN's and QR-DQN's (:mod:`zoo_rl.qdagger`).
DISTILLING_ALGOS = ("ppo", "a2c", "dqn", "qrdqn")


def unsupported(method: str, algo: str) -> bool:
    """Whether ``method`` cannot train with ``algo``: MULTIPOLAR needs an on-policy actor-critic (PPO, A2C; its
    aggregation sits in front of an actor-critic policy's Gaussian or categorical head, :func:`zoo_rl.multipolar_policy`),
    a kickstarted method an algorithm of :data:`DISTILLING_ALGOS` (SAC's squashed actor has no distillation here)."""
    if method.partition(":")[0] == "multipolar":
        return algo not in ON_POLICY
    return kickstart_teachers(method) is not None and algo not in DISTILLING_ALGOS


_POLICY_ZOOS: dict[tuple[str, ...], list[Any]] = {}


def cached_policy_zoo(zoo: Sequence[str]) -> list[Any]:
    """:func:`zoo_rl.policy_sources.load_policy_zoo`, read once per process for the same list of sources."""
    from zoo_rl.policy_sources import load_policy_zoo

    key = tuple(str(z) for z in zoo)
    if key not in _POLICY_ZOOS:
        _POLICY_ZOOS[key] = load_policy_zoo(list(key))
    return _POLICY_ZOOS[key]


def source_names(zoo: Sequence[str], task: Task) -> list[str]:
    """The display names of a study's sources, in zoo order (the names of tables, rankings and methods)."""
    sources = cached_policy_zoo(zoo) if whole_policy(task) else cached_zoo(zoo)
    return [s.name for s in sources]


def committed_zoo(zoo_dir: Path = DEFAULT_ZOO_DIR) -> list[Path]:
    """Every exported source folder (with ``meta.json``) under ``zoo_dir``."""
    return sorted(p.parent for p in Path(zoo_dir).glob(f"*/{META_FILE}"))


def default_zoo(task: Task, zoo_dir: Path | None = None) -> list[str]:
    """The committed zoo of ``task``'s family minus any source trained on exactly ``task``
    (empty while that zoo has no trained source)."""
    zoo_dir = Path(zoo_dir or ZOO_DIRS[task.family])
    return expand_zoo([str(zoo_dir)], task) if is_zoo_folder(zoo_dir) else []


def is_zoo_folder(path: Path) -> bool:
    """A folder of sources (``<path>/<name>/meta.json``) rather than one source."""
    return path.is_dir() and not (path / META_FILE).is_file() and any(path.glob(f"*/{META_FILE}"))


def expand_zoo(entries: list[str], task: Task) -> list[str]:
    """Sources named by ``entries``; a zoo folder (e.g. ``agents/zoo``) stands for its members,
    minus those trained on exactly ``task`` (leave-one-out). Single sources are kept as given."""
    out: list[str] = []
    for entry in entries:
        path = Path(entry)
        members = committed_zoo(path) if path.is_dir() and not (path / META_FILE).is_file() else None
        if members is None:  # one source: a source folder, an SB3 zip, a hub id
            out.append(entry)
            continue
        if not members:
            hint = (f": train it with `python agents/train.py --zoo --manifest {path / 'manifest.yml'}`"
                    if (path / "manifest.yml").is_file() else "")
            raise ValueError(f"{entry} is neither a source (no meta.json) nor a zoo of sources "
                             f"(no <name>/meta.json inside){hint}.")
        for folder in members:
            meta = json.loads((folder / META_FILE).read_text())
            if not resolve(meta["game"], meta.get("mode"), meta.get("difficulty")).same_task(task):
                out.append(str(folder))
    return out


def zoo_record(zoo: Sequence[str]) -> list[dict[str, str]]:
    """``[{"path": ..., "sha256": ...}]`` of a resolved zoo: paths relative to the repository where they lie in it,
    the weights' digest from a compact folder's ``meta.json`` (its ``sha256``) or of the file itself."""
    out = []
    for entry in zoo:
        path = Path(entry)
        shown = path.resolve().relative_to(ROOT) if path.exists() and path.resolve().is_relative_to(ROOT) else path
        if (path / META_FILE).is_file():
            digest = json.loads((path / META_FILE).read_text()).get("sha256", "")
        elif path.is_file():
            digest = sha256_of(path)
        else:  # a hub id
            digest = ""
        out.append({"path": str(shown), "sha256": digest})
    return out


def check_zoo(out: Path, sources: list[dict[str, str]]) -> None:
    """A study folder continues only with the sources it was trained with: its tables must never mix runs of two
    zoos (say, a study published with one zoo, rerun after the default zoo changed).

    :raises ValueError: ``out/study.json`` records other sources (paths or weights), with the ``--zoo`` that
        continues the study and the alternative of another ``--out``.
    """
    path = Path(out) / STUDY
    try:
        earlier = json.loads(path.read_text()).get("sources") if path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        earlier = None
    if earlier is None or earlier == sources:
        return
    def paths(record: list[dict[str, str]]) -> str:
        return " ".join(r["path"] for r in record) or "(none)"
    same_paths = [r["path"] for r in earlier] == [r["path"] for r in sources]
    why = ("the same paths now hold other weights (their sha256 differ)" if same_paths
           else f"this call resolves the zoo to {paths(sources)}")
    raise ValueError(f"{out} was trained with the sources {paths(earlier)}; {why}. Its tables would mix two zoos: "
                     f"continue it with --zoo {paths(earlier)}"
                     + (" (checked out at the commit that trained it)" if same_paths else "")
                     + ", or write this study to another --out.")


def trained_normalisation(run_dir: Path, method: str) -> str | None:
    """The gate normalisation a started run trained with (``None``: not started, or not gated).

    :raises ValueError: the run's ``config.json`` records no ``extractor_kwargs`` (a run of another version
        of zoo-rl), with how to go on.
    """
    config = Path(run_dir) / CONFIG
    if not config.is_file():
        return None
    recorded = _read_json(config, Path(run_dir)).get("extractor_kwargs")
    if recorded is None:
        raise ValueError(f"{config} records no extractor_kwargs, so the gates {method} trained with are unknown: "
                         f"add them to it (e.g. \"extractor_kwargs\": {json.dumps(extractor_kwargs(method))}) or "
                         f"delete {run_dir} to train the run again.")
    return recorded.get("normalisation")


def _unreadable(path: Path, reason: str, fix: str) -> ValueError:
    return ValueError(f"{path} is unreadable ({reason}): {fix}. Every other run is untouched, and the same command "
                      "resumes the study.")


def _retrain(run_dir: Path) -> str:
    return f"delete the folder {run_dir} to train this run again from the start"


def _read_json(path: Path, run_dir: Path, fix: str | None = None) -> dict[str, Any]:
    """A run file's JSON object.

    :raises ValueError: the file is not a JSON object, naming it and ``fix`` (default: train the run again).
    """
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, str(exc), fix or _retrain(run_dir)) from None
    if not isinstance(value, dict):
        raise _unreadable(path, "not a JSON object", fix or _retrain(run_dir))
    return value


def check_run_files(job: RunJob) -> None:
    """Check the files of a run that the study reads back (its state and its tables come from them) before
    anything trains: a truncated or corrupt file stops the study with its name and the fix, instead of a
    traceback later or a table silently built from it. Every file is written atomically, so a kill does not
    corrupt one: a full disk, a copy cut short or a hand edit can. (The checkpoint is checked when its run
    resumes; the study's own tables are rebuilt from these files.)

    :raises ValueError: naming the file and the fix.
    """
    run_dir = job.run_dir
    finished = (run_dir / RESULT).is_file()
    config = run_dir / CONFIG
    if config.is_file():
        _read_json(config, run_dir, None if finished else
                   f"delete {config}, which the rerun writes again (it then cannot check that the run resumes on "
                   f"the environment backend and gate normalisation it started with), or {_retrain(run_dir)}")
    if finished:
        row = _read_json(run_dir / RESULT, run_dir)
        missing = [k for k in ("target", "method", "seed", "final_return") if k not in row]
        if missing:
            raise _unreadable(run_dir / RESULT, f"no {', '.join(missing)}", _retrain(run_dir))
    final = run_dir / FINAL_EVALUATION
    if final.is_file():
        fix = (f"delete it and run `python experiments/reevaluate.py {job.study.out}`, which plays the same seeded "
               "final games again" if finished else "delete it: the rerun plays the run's final games again")
        returns = _read_json(final, run_dir, fix).get("returns")
        if not isinstance(returns, list) or not returns:
            raise _unreadable(final, "no returns", fix)
    status = run_dir / STATUS
    if status.is_file() and not finished:
        fix = (f"{_retrain(run_dir)}, or delete {status} to resume from its checkpoint without the training time "
               "recorded before it (its steps/s would then be too high)")
        record = _read_json(status, run_dir, fix)
        if not isinstance(record.get("num_timesteps"), int) or "wall_seconds" not in record:
            raise _unreadable(status, "no num_timesteps or wall_seconds", fix)
    evaluations = run_dir / EVALUATIONS
    if evaluations.is_file():
        import numpy as np

        try:
            with np.load(evaluations) as data:
                lengths = {len(data[k]) for k in ("timesteps", "results", "ep_lengths")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise _unreadable(evaluations, str(exc) or type(exc).__name__, _retrain(run_dir)) from None
        if len(lengths) != 1 or (finished and lengths == {0}):
            raise _unreadable(evaluations, "timesteps, results and ep_lengths disagree", _retrain(run_dir))


def check_normalisation(job: RunJob) -> None:
    """A gated run continues (or counts in the tables) only under the normalisation it was trained with.

    :raises ValueError: the run folder holds a run with another normalisation, with the flag that continues it.
    """
    wanted = extractor_kwargs(job.method, job.study.normalisation).get("normalisation")
    started = trained_normalisation(job.run_dir, job.method)
    if wanted is not None and started is not None and started != wanted:
        raise ValueError(f"{job.run_dir} ({job.method}) was trained with gate normalisation {started!r}, this study "
                         f"asks for {wanted!r}: rerun with --gate-normalisation {started}, or write the study to "
                         f"another --out (a method name can also fix it: {job.method.partition(':')[0]}:{wanted}).")


def policy_hyperparams(algo: str, task: Task) -> tuple[dict[str, Any], int, Any]:
    """``(hyperparams, n_envs, policy)`` of a whole-policy target from ``agents/hyperparams/<algo>.yml`` (its
    family's entry), with :data:`POLICY_STUDY_NORMALIZE` in place of the file's ``normalize``."""
    from zoo_rl.training import hyperparams_for

    params, n_envs, policy = hyperparams_for(HYPERPARAMS_DIR / f"{algo}.yml", task)
    if params.get("normalize"):
        params["normalize"] = dict(POLICY_STUDY_NORMALIZE)
    return params, n_envs, policy


def policy_study_lr(algo: str, task: Task) -> float:
    """The default learning rate of a whole-policy study of ``task``: the hyperparameter file's own for the target
    (its family's entry, or the target's own where the file has one: the RL Baselines3 Zoo's tuned value, e.g. the
    HalfCheetah PPO's for MuJoCo, the Pendulum SAC's for classic control), constant. The paper's 1e-4 is an Atari
    setting; a scratch baseline trained at a rate its task was not tuned for would flatter every transfer method.

    :raises ValueError: the file has no entry for the target's family, or its rate is a schedule or missing (give
        ``--lr``).
    """
    from zoo_rl.training import load_hyperparams

    rate = load_hyperparams(HYPERPARAMS_DIR / f"{algo}.yml", task.game, family=task.family).get("learning_rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        raise ValueError(f"agents/hyperparams/{algo}.yml gives its {task.family} entry no constant learning_rate "
                         f"({rate!r}): pass --lr.")
    return float(rate)


def check_policy_zoo(algo: str, zoo: Sequence[str], env: Any, task: Task) -> None:
    """Build the whole-policy zoo model of ``algo`` on ``env`` once (uniform gates, the target's architecture):
    it raises, naming the layer, the shapes and the sources, where the zoo does not fit the target."""
    from zoo_rl.training import algo_class, sb3_policy_kwargs
    from zoo_rl.zoo_policies import zoo_policy

    params, _, policy = policy_hyperparams(algo, task)
    cls, kwargs = zoo_policy(algo, zoo=list(zoo), policy=policy, gate="uniform",
                             **sb3_policy_kwargs(params.get("policy_kwargs")))
    algo_class(algo)(cls, env, policy_kwargs=kwargs, device="cpu")


def plan(study: StudyConfig) -> list[RunJob]:
    """Resolve and check everything before any training: target, zoo, methods, algorithm, the files of the runs
    started before (:func:`check_run_files`), and the runs to train at a time where ``study.workers`` is None
    (:func:`zoo_rl.study.cores.default_workers`).

    :raises ValueError / FileNotFoundError: with what to fix.
    """
    if study.algo.lower() not in ALGOS:
        raise ValueError(f"Unknown algorithm {study.algo!r}; choose one of {sorted(ALGOS)}.")
    if study.seeds < 1 or study.steps < 1:
        raise ValueError("--seeds and --steps must be positive.")
    if study.first_seed < 0:
        raise ValueError(f"--first-seed must be 0 or more, got {study.first_seed}.")
    if study.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {study.precision!r}.")
    if study.launcher not in ("local", "ray"):
        raise ValueError(f"launcher must be 'local' or 'ray', got {study.launcher!r}.")
    task = resolve(study.target, study.mode, study.difficulty)
    policies = whole_policy(task)
    if study.algo.lower() in CONTINUOUS_ONLY and not policies:
        raise ValueError(f"--algo {study.algo} acts in continuous action spaces, and {task.game}'s actions are discrete "
                         "(an image target's): choose ppo, a2c, dqn or qrdqn, or a state-vector target such as "
                         "classic:pendulum+g=12.")
    if study.methods == DEFAULT_METHODS:
        # A study runs the defaults its algorithm supports: a DQN study without MULTIPOLAR, a SAC study without
        # MULTIPOLAR and Kickstarting
        defaults = POLICY_DEFAULT_METHODS if policies else DEFAULT_METHODS
        study.methods = [m for m in defaults if not unsupported(m, study.algo)]
    if study.lr is None:
        study.lr = policy_study_lr(study.algo, task) if policies else PAPER_LR
    wrong_kind = [m for m in study.methods if m.partition(":")[0] in (EXTRACTOR_ONLY if policies else POLICY_ONLY)]
    if wrong_kind:
        raise ValueError(f"{', '.join(wrong_kind)}: " + (
            "the ensemble puts NatureCNN extractors side by side; a whole-policy target has none (MULTIPOLAR is the "
            "multi-source baseline there)" if policies else
            "MULTIPOLAR aggregates sources acting in the target's own action space (whole-policy zoos such as "
            "agents/zoo-mujoco); an image target's zoo plays other games") + ".")
    refused = [m for m in study.methods if unsupported(m, study.algo)]
    if refused:
        raise ValueError(f"{', '.join(refused)}: --algo {study.algo} cannot train them. MULTIPOLAR is built for PPO and "
                         "A2C students (zoo_rl.multipolar aggregates the sources in front of an actor-critic policy's "
                         "action head); Kickstarting distils into PPO and A2C (zoo_rl.kickstart) and, QDagger-style, "
                         f"into DQN and QR-DQN (zoo_rl.qdagger). Leave them out of --methods (an --algo {study.algo} "
                         "study's default methods do), or study them with --algo ppo.")
    zoo = expand_zoo(study.zoo, task) if study.zoo is not None else default_zoo(task)
    needs_zoo = any(m.partition(":")[0] != "scratch" for m in study.methods)
    sources: list[Any] = []
    if needs_zoo:
        if not zoo:
            manifest = (ZOO_DIRS[task.family] / "manifest.yml").relative_to(ROOT)
            raise ValueError(f"No zoo sources for target {task.slug}: train some with `python agents/train.py "
                             f"--zoo --manifest {manifest}`, pass --zoo, or run only --methods scratch.")
        sources = cached_policy_zoo(zoo) if policies else cached_zoo(zoo)
        env = make_env(task, 1, seed=0)
        try:
            if policies:
                check_policy_zoo(study.algo, zoo, env, task)
            else:
                from stable_baselines3.common.vec_env import VecTransposeImage

                space = VecTransposeImage(env).observation_space
                ZooExtractor(space, zoo=zoo, gate="uniform")  # raises if the zoo does not fit the env
        finally:
            env.close()
    methods = expand_methods(study.methods, sources)
    if study.out is None:
        study.out = ROOT / "runs" / "transfer" / f"{task.slug}-{study.algo}"
    if needs_zoo:
        check_zoo(study.out, zoo_record(zoo))
    if study.normalisation is not None and study.normalisation not in NORMALISATIONS:
        raise ValueError(f"Unknown gate normalisation {study.normalisation!r}; choose from {', '.join(NORMALISATIONS)}.")
    # Seed-major: a study stopped part-way has every method at the same number of seeds.
    seeds = range(study.first_seed, study.first_seed + study.seeds)
    jobs = [RunJob(study, task, list(zoo), m, s) for s in seeds for m in methods]
    for job in jobs:
        check_run_files(job)
        check_normalisation(job)
    if study.workers is None:  # one run per free core (zoo_rl.study.cores)
        from zoo_rl.study.cores import default_workers

        pending = sum(1 for j in jobs if not (j.run_dir / RESULT).is_file())
        study.workers = 1 if study.launcher == "ray" else default_workers(pending)
    if study.workers < 1:
        raise ValueError(f"--workers must be positive, got {study.workers}.")
    return jobs
