"""Running a study: :func:`run_study` trains every unfinished run, in this process, a pool of processes or on
Ray, and rebuilds the tables after each run."""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from zoo_rl.files import RANKING, RESULT, file_lock
from zoo_rl.study.config import RunJob, StudyConfig, plan, write_study_json
from zoo_rl.study.progress import StudyProgress, describe_plan, stop_message
from zoo_rl.study.runs import run_job, study_ranking
from zoo_rl.study.tables import write_tables


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the study like Ctrl-C (in the main thread; elsewhere nothing changes)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_study(study: StudyConfig, progress: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              poll_seconds: float = 10.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plan, check, then train every run not finished yet; rebuild the tables after each run.

    Several processes may share one study folder (two terminals, Ray workers): each run is trained by the
    process that holds its lock; the others train the next free run, then wait for the runs held elsewhere.
    Ctrl-C or SIGTERM stops the study with :func:`stop_message` (then raises ``KeyboardInterrupt``).
    """
    jobs = plan(study)
    out = Path(study.out)
    write_study_json(study, len(jobs))
    if progress:
        print(describe_plan(study, jobs), flush=True)
    if jobs[0].zoo and any(j.method != "scratch" for j in jobs):  # before any run: ranked methods start from it
        with file_lock(out / (RANKING + ".lock")):
            if progress and not (out / RANKING).is_file():
                print(f"ranking the sources ({study.rank_steps:,} agent steps each) -> {out / RANKING}", flush=True)
            study_ranking(study, jobs[0].task, jobs[0].zoo)
    pending = [j for j in jobs if not (j.run_dir / RESULT).is_file()]
    bar = StudyProgress(study, jobs, enabled=progress)

    def finished(job: RunJob, row: dict[str, Any]) -> None:
        write_tables(out)
        bar.finished(job)
        if on_result is not None:
            on_result(row)

    try:
        with _sigterm_as_interrupt():
            elsewhere = _launch(study, pending, finished, bar)
            while elsewhere:  # runs another process holds: wait for them, or take them over if it stops
                time.sleep(poll_seconds)
                bar.poll()
                for job in list(elsewhere):
                    row = run_job(job, on_progress=bar.update)
                    if row is not None:
                        elsewhere.remove(job)
                        finished(job, row)
    except KeyboardInterrupt:
        bar.close()
        print("\n" + stop_message(study, jobs), flush=True)
        raise
    bar.close()
    return write_tables(out)


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
    threads = max(1, (os.cpu_count() or 1) // study.workers)
    pool = ProcessPoolExecutor(max_workers=study.workers)
    try:
        futures = {pool.submit(run_job, job, threads): job for job in pending}
        while futures:
            done, _ = wait(futures, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures.pop(future)
                row = future.result()
                if row is None:
                    elsewhere.append(job)
                else:
                    finished(job, row)
            bar.poll()
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):  # SIGTERM reached only this process
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return elsewhere


def _run_ray(study: StudyConfig, jobs: list[RunJob], finished: Callable, bar: StudyProgress) -> list[RunJob]:
    try:
        import ray
    except ImportError:
        raise ValueError("--launcher ray needs Ray: `pip install ray`.") from None
    if not ray.is_initialized():  # zoo_rl and envs must be installed on the workers (pip install -e .)
        ray.init(address=study.ray_address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_job)
    pending = {remote.remote(job, 1): job for job in jobs}
    elsewhere = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=5)
        for ref in done:
            job = pending.pop(ref)
            row = ray.get(ref)
            if row is None:
                elsewhere.append(job)
            else:
                finished(job, row)
        bar.poll()
    return elsewhere
