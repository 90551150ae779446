"""How study processes share a machine's cores: how many runs a study trains at a time, and with how many
torch threads each.

Every study process registers itself for its lifetime in a per-user folder (``$ZOO_RL_REGISTRY``, else
``<tmp>/zoo-rl-<uid>/studies``): one file per process naming the runs it trains at a time, held under an
``flock`` that the operating system releases when the process dies, however it dies (a file whose lock can be
taken belongs to a dead process and is removed). From that registry:

- the default ``--workers`` (:func:`default_workers`) is one run per core left free by the other study processes,
  at most the runs left to train, and at least one: on 2 cores, two runs with one torch thread each train about
  1.35x the steps per second of one run with two threads (``benchmarks/README.md#speed``);
- each run's torch threads (:func:`run_threads`) are the machine's cores over every run registered on it, at
  least one and at most ``$OMP_NUM_THREADS`` where that is set. A run checks again after every rollout, so a
  study started alone gives its extra threads back when a second study process starts on the machine, and takes
  them again when that one ends: two terminals on one machine train like one process with ``--workers 2``,
  instead of each running torch on every core.

Without ``fcntl`` (Windows) nothing is registered and every process counts as alone.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming the registry folder (tests point it at a folder of their own).
REGISTRY_ENV = "ZOO_RL_REGISTRY"
#: Seconds for which :func:`run_threads` reuses what it last read from the registry.
RECHECK_SECONDS = 10.0


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_cap() -> int | None:
    """``$OMP_NUM_THREADS`` where it is set to a positive number (the user's cap on threads per process)."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def registry_folder() -> Path:
    folder = os.environ.get(REGISTRY_ENV)
    if folder:
        return Path(folder)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"zoo-rl-{uid}" / "studies"


@dataclass
class StudyProcess:
    """A registered study process: its pid, the runs it trains at a time, and its study folder."""

    pid: int
    runs: int
    out: str


def study_processes(include_self: bool = False) -> list[StudyProcess]:
    """The study processes alive on this machine (by the registry); removes the files of dead ones."""
    try:
        import fcntl
    except ImportError:
        return []
    folder = registry_folder()
    if not folder.is_dir():
        return []
    alive = []
    for path in sorted(folder.glob("*.json")):
        own = path.stem == str(os.getpid())
        if own and not include_self:
            continue
        try:
            fh = open(path)
        except OSError:
            continue
        with fh:
            if not own:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # held: its process is alive
                else:  # nobody holds it: its process is gone
                    path.unlink(missing_ok=True)
                    continue
            try:
                record = json.loads(fh.read())
                alive.append(StudyProcess(int(record["pid"]), int(record["runs"]), str(record.get("out", ""))))
            except (ValueError, KeyError, TypeError):
                continue
    return alive


class Registration:
    """This process in the registry while the ``with`` block runs, training ``runs`` runs at a time."""

    def __init__(self, runs: int, out: str | os.PathLike) -> None:
        self.runs, self.out = int(runs), str(out)
        self._file = None
        self._path: Path | None = None

    def __enter__(self) -> "Registration":
        try:
            import fcntl
        except ImportError:
            return self
        folder = registry_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{os.getpid()}.tmp"
            fh = open(tmp, "w")
            fcntl.flock(fh, fcntl.LOCK_EX)  # locked before it has its name: never taken for a dead process's
            fh.write(json.dumps({"pid": os.getpid(), "runs": self.runs, "out": self.out}))
            fh.flush()
            self._path = folder / f"{os.getpid()}.json"
            os.replace(tmp, self._path)
            self._file = fh
        except OSError:  # a registry that cannot be written: this process counts as alone
            self._path = None
        _forget()
        return self

    def __exit__(self, *exc) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        if self._file is not None:
            self._file.close()
        self._file = self._path = None
        _forget()


def default_workers(pending: int) -> int:
    """Runs to train at a time when ``--workers`` is not given: one per core left free by the other study
    processes on this machine, at most ``pending``, at least one."""
    others = sum(p.runs for p in study_processes())
    return max(1, min(machine_cores() - others, pending))


def threads_for(runs_on_machine: int) -> int:
    """Torch threads of one run when ``runs_on_machine`` runs share the machine (at least one, at most the cap)."""
    threads = max(1, machine_cores() // max(1, runs_on_machine))
    cap = thread_cap()
    return min(threads, cap) if cap else threads


_cached: tuple[float, int] | None = None


def _forget() -> None:
    global _cached
    _cached = None


def run_threads() -> int:
    """Torch threads of one run now: :func:`threads_for` every run registered on the machine (this process's
    included; a worker process counts its parent's), read from the registry at most every
    :data:`RECHECK_SECONDS`."""
    global _cached
    now = time.monotonic()
    if _cached is None or now - _cached[0] > RECHECK_SECONDS:
        _cached = (now, threads_for(sum(p.runs for p in study_processes(include_self=True))))
    return _cached[1]


def describe_split(workers: int, launcher: str = "local", runs_left: int | None = None) -> str:
    """One line for the plan: the cores, the other study processes on the machine, and how this study splits
    the cores between its runs (with a hint where ``workers`` leaves cores idle that ``runs_left`` could use)."""
    cores = machine_cores()
    if launcher == "ray":
        return f"cores: {cores} here; Ray gives each run one CPU and one torch thread"
    others = study_processes()
    total = workers + sum(p.runs for p in others)
    threads = threads_for(total)
    line = (f"cores: {cores}; " + (f"{workers} runs at a time, {threads} torch thread{'s' if threads > 1 else ''} each"
                                   if workers > 1 else
                                   f"1 run at a time, with {threads} torch thread{'s' if threads > 1 else ''}"))
    cap = thread_cap()
    if cap and cap < max(1, cores // max(1, total)):
        line += f" (OMP_NUM_THREADS={cap})"
    if not others:
        if workers > 1 and threads == 1:
            return line + " (one run per core: the fastest split measured, benchmarks/README.md#speed)"
        if workers < cores and (runs_left is None or runs_left > workers):
            return line + (f"; --workers {min(cores, runs_left or cores)} (one run per core, the default) would train "
                           "more steps per second: benchmarks/README.md#speed")
        return line
    named = ", ".join(f"pid {p.pid}: {p.runs} run{'s' if p.runs > 1 else ''} in {p.out}" for p in others)
    return (f"{line}, sharing the machine with {len(others)} other study process{'es' if len(others) > 1 else ''} "
            f"({named}): {total} runs on {cores} cores. Processes that share a machine share its cores; for one "
            "study, one process with --workers N trains its runs at least as fast as N processes.")
