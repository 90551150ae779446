"""Running a study: :func:`run_study` trains every unfinished run, in this process, a pool of processes or on
Ray, and rebuilds the tables after each run. A signal stops it in any phase with one line that says where it
stopped (:mod:`zoo_rl.study.signals`); a full disk stops it the same way, losing nothing written before."""

from __future__ import annotations

import errno
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from zoo_rl.files import RANKING, RANKING_PARTIAL, RESULT, file_lock
from zoo_rl.study.config import RunJob, StudyConfig, plan, source_names, write_study_json, zoo_record
from zoo_rl.study.cores import Registration, machine_cores, study_processes
from zoo_rl.study.park import parked_path, unpark_study
from zoo_rl.study.progress import RankingProgress, StudyProgress, describe_plan, stop_message
from zoo_rl.study.runs import kept_scores, read_ranking, run_job, study_ranking
from zoo_rl.study.signals import fault_point, in_worker_job, stop_on_signals, worker_init
from zoo_rl.study.tables import write_tables

#: ``OSError`` numbers of a full disk (or quota): the study stops with a line that says so.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WorkersLost(RuntimeError):
    """Worker processes died while training runs (killed from outside, out of memory, a lost Ray node): their
    runs keep their last checkpoints, and the next launch resumes them."""


class _Phase:
    """The phase a study is in, for its stop line."""

    def __init__(self) -> None:
        self.name = "plan"
        self.detail: Callable[[], str] = lambda: ""


def run_study(study: StudyConfig, progress: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              poll_seconds: float = 10.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plan, check, rank the sources, then train every run not finished yet; rebuild the tables after each run.

    Several processes may share one study folder (two terminals, Ray workers): each run is trained by the
    process that holds its lock; the others train the next free run, then wait for the runs held elsewhere.
    Study processes on one machine share its cores (:mod:`zoo_rl.study.cores`); this process's torch threads
    are as they were when it returns.

    Ctrl-C or SIGTERM, in any phase, stops the study with :func:`stop_message` (then raises
    ``KeyboardInterrupt``); a second signal ends the process at once. A full disk stops it with a line that says
    so (then raises the ``OSError``). Worker processes that died leave their runs to the next launch
    (:class:`WorkersLost`).
    """
    phase = _Phase()
    jobs: list[RunJob] = []
    bars: list[Any] = []
    threads = torch.get_num_threads()
    try:
        with stop_on_signals():
            chosen = study.workers is not None
            jobs = plan(study)
            out = Path(study.out)
            unparked = unpark_study(out, study.target)  # finished runs parked on another machine (--park)
            if unparked and progress:
                print(f"Took up {unparked} finished run(s) parked in {parked_path(out)}.", flush=True)
            from_zoo = [j for j in jobs if j.method != "scratch"]
            write_study_json(study, len(jobs), zoo_record(from_zoo[0].zoo) if from_zoo else None)
            pending = [j for j in jobs if not (j.run_dir / RESULT).is_file()]
            standby = study.launcher == "local" and not chosen and bool(pending) and standing_by(out)
            runs = 0 if standby else study.workers if study.launcher == "local" else min(machine_cores(), len(pending))
            with Registration(runs, out):
                if progress:
                    print(describe_plan(study, jobs), flush=True)
                    if standby:
                        print(STANDBY_LINE, flush=True)
                fault_point("plan")
                if jobs[0].zoo and any(j.method != "scratch" for j in jobs):  # ranked methods start from it
                    phase.name = "ranking"
                    phase.detail = lambda: _ranking_detail(study, jobs)
                    _rank(study, jobs, progress, bars)
                phase.name, phase.detail = "training", (lambda: "")
                bar = StudyProgress(study, jobs, enabled=progress)
                bars.append(bar)

                def finished(job: RunJob, row: dict[str, Any]) -> None:
                    phase.name = "tables"
                    write_tables(out)
                    phase.name = "training"
                    bar.finished(job)
                    if on_result is not None:
                        on_result(row)

                elsewhere = list(pending) if standby else _launch(study, pending, finished, bar)
                while elsewhere:  # runs another process holds: wait for them, or take them over if it stops
                    time.sleep(min(poll_seconds, STANDBY_POLL_SECONDS) if standby else poll_seconds)
                    bar.poll()
                    if standby and standing_by(out):  # the other process still has every core: only watch it
                        for job in [j for j in elsewhere if (j.run_dir / RESULT).is_file()]:
                            elsewhere.remove(job)
                            bar.finished(job)
                        continue
                    standby = False  # it has ended (or freed a core): train what it left
                    for job in list(elsewhere):
                        row = run_job(job, on_progress=bar.update)
                        if row is not None:
                            elsewhere.remove(job)
                            finished(job, row)
                bar.close()
                phase.name = "tables"
                return write_tables(out)
    except KeyboardInterrupt:
        _close(bars)
        print("\n" + stop_message(study, jobs, phase.name, phase.detail()), flush=True)
        raise
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        _close(bars)
        writing = f", writing {exc.filename}" if exc.filename else ""
        print("\n" + stop_message(study, jobs, phase.name, phase.detail(),
                                  reason=f"the disk is full: {exc.strerror}{writing}; every file written before is "
                                         "whole", first="Free some space, then run"), flush=True)
        raise
    except WorkersLost as exc:
        _close(bars)
        print(f"\n{exc}\n" + stop_message(study, jobs, phase.name), flush=True)
        raise
    finally:
        torch.set_num_threads(threads)


#: How often a process that stands by looks at the runs (a file's existence each): it ends with the other's last run.
STANDBY_POLL_SECONDS = 1.0
#: What a study process says when it stands by (:func:`standing_by`).
STANDBY_LINE = ("another process trains this study on every core of the machine: this one watches it, and trains "
                "the runs it leaves if it stops (one process with --workers N is the fastest way to train a study)")


def standing_by(out: Path) -> bool:
    """True while another study process trains the study in ``out`` and the study processes on the machine leave
    no core free. A second process on the same study would then only slow the first (3 runs on 2 cores, and its
    own start-up): it stands by instead, and takes over the runs the other leaves when that one ends. With
    ``--workers`` given, a process always trains."""
    others = study_processes()
    same = any(Path(p.out).resolve() == Path(out).resolve() and p.runs > 0 for p in others)
    return same and machine_cores() - sum(p.runs for p in others) <= 0


def _close(bars: list[Any]) -> None:
    for bar in bars:
        bar.close()


def _ranking_detail(study: StudyConfig, jobs: list[RunJob]) -> str:
    names = source_names(jobs[0].zoo, jobs[0].task)
    kept = kept_scores(Path(study.out) / RANKING_PARTIAL, jobs[0].task, study.rank_steps, names, None)
    scored = [] if kept is None else list(kept["source"])
    return (f"{len(scored)} of {len(names)} sources scored"
            + (f", kept in {Path(study.out) / RANKING_PARTIAL}: {', '.join(scored)}" if scored else ""))


def _rank(study: StudyConfig, jobs: list[RunJob], progress: bool, bars: list[Any]) -> None:
    """The study's ranking.csv, computed (under a lock: one process ranks, the others wait for it) unless whole."""
    from zoo_rl.study.cores import run_threads

    out, task, zoo = Path(study.out), jobs[0].task, jobs[0].zoo
    names = source_names(zoo, task)
    say = (lambda line: print(line, flush=True)) if progress else None
    with file_lock(out / (RANKING + ".lock"), wait=False) as free:
        if not free:
            if say:
                say(f"another process is ranking the sources for {out}: waiting for it")
    with file_lock(out / (RANKING + ".lock")):
        if (out / RANKING).is_file() and read_ranking(out / RANKING, names)[0] is not None:
            return
        if say:
            say(f"ranking the sources ({study.rank_steps:,} agent steps each) -> {out / RANKING}")
        kept = kept_scores(out / RANKING_PARTIAL, task, study.rank_steps, names, None)
        bar = RankingProgress(task.slug, len(names), study.rank_steps, kept=0 if kept is None else len(kept),
                              enabled=progress)
        bars.append(bar)
        torch.set_num_threads(run_threads())
        started = time.monotonic()

        def tell(line: str) -> None:  # above the progress line
            if bar.bar is not None:
                bar.bar.write(line)
                sys.stdout.flush()
            else:
                print(line, flush=True)

        table = study_ranking(study, task, zoo, on_play=bar.update, say=tell if progress else None,
                              on_scored=bar.source_scored)
        bar.close()
        if say:
            say(f"ranked {len(table)} sources in {time.monotonic() - started:.0f} s, best first: "
                + ", ".join(f"{r.source} ({r.basis})" for r in table.sort_values("rank").itertuples()))


def _launch(study: StudyConfig, pending: list[RunJob], finished: Callable[[RunJob, dict[str, Any]], None],
            bar: StudyProgress) -> list[RunJob]:
    """Train ``pending`` with the study's launcher; returns the runs another process was training."""
    elsewhere: list[RunJob] = []
    if study.launcher == "ray":
        return _run_ray(study, pending, finished, bar)
    if study.workers <= 1:
        for job in pending:
            row = run_job(job, on_progress=bar.update)
            if row is None:
                elsewhere.append(job)
            else:
                finished(job, row)
        return elsewhere
    # Spawned workers: a clean interpreter each (no locks or threads copied from this one), children of this
    # process's main thread, so that they end with it (worker_init).
    pool = ProcessPoolExecutor(max_workers=study.workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=worker_init)
    try:
        futures = {pool.submit(in_worker_job, run_job, job): job for job in pending}
        while futures:
            done, _ = wait(futures, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures.pop(future)
                row = future.result()
                if row is None:
                    elsewhere.append(job)
                else:
                    finished(job, row)
            # The pool may miss a dead worker: Python 3.11's submit() wakes the pool's manager thread before it
            # starts the new worker, whose death then goes unwatched. Check them here.
            workers = dict(getattr(pool, "_processes", None) or {})  # a copy: the manager thread changes it
            dead = [p for p in workers.values() if not p.is_alive()]
            if futures and dead:
                raise BrokenProcessPool(", ".join(f"pid {p.pid} ended with exit code {p.exitcode}" for p in dead))
            bar.poll()
    except BrokenProcessPool as exc:
        _stop_workers(pool)
        raise WorkersLost(f"A worker process died ({exc}): the runs it trained keep their last checkpoints.") from None
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown()
    return elsewhere


def _stop_workers(pool: ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """Stop the pool's workers (SIGTERM: each stops its run as on Ctrl-C) and wait until they have ended, so that
    the stop line reads their last checkpoints and no worker outlives the study."""
    processes = list(dict(getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)
    pool.shutdown(wait=False, cancel_futures=True)


def _run_ray(study: StudyConfig, jobs: list[RunJob], finished: Callable, bar: StudyProgress) -> list[RunJob]:
    """Train ``jobs`` as Ray tasks (one CPU and one torch thread each). A task whose worker dies is retried by
    Ray (its ``max_retries``), resuming from the run's checkpoint; one that still fails is left to the next
    launch (:class:`WorkersLost`, after the other runs). On a stop, the tasks still running are cancelled (their
    workers killed, their locks released) and a Ray started here is shut down."""
    try:
        import ray
    except ImportError:
        raise ValueError("--launcher ray needs Ray: `pip install ray`.") from None
    started_here = not ray.is_initialized()
    if started_here:  # zoo_rl and envs must be installed on the workers (pip install -e .)
        ray.init(address=study.ray_address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_job)
    pending = {remote.remote(job, 1): job for job in jobs}
    elsewhere, lost = [], []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=5)
            for ref in done:
                job = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayTaskError):  # the run itself failed: its error
                        raise
                    lost.append((job, exc))
                    continue
                if row is None:
                    elsewhere.append(job)
                else:
                    finished(job, row)
            bar.poll()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
        raise
    if lost:
        raise WorkersLost("Ray lost the workers of " + "; ".join(
            f"{j.method} seed {j.seed} ({type(e).__name__})" for j, e in lost)
            + ": each keeps its last checkpoint, and the next launch resumes it.")
    return elsewhere
