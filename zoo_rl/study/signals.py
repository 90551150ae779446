"""How a study process stops: on a signal, in every phase, with its worker processes.

- :func:`stop_on_signals`: the first SIGINT (Ctrl-C) or SIGTERM raises ``KeyboardInterrupt`` in the main
  thread wherever the study is (planning, ranking, training, the final games, writing tables), so that files
  being written are finished or removed and the study can say where it stopped; a second signal ends the
  process at once (:func:`exit_at_once`): everything on disk is written atomically, so nothing is lost but
  what the first stop would also have lost.
- :func:`worker_init`: a worker process of ``--workers`` (``ProcessPoolExecutor``) ends with the study process:
  on Linux the kernel sends it SIGTERM when its parent dies, however the parent dies (``PR_SET_PDEATHSIG``);
  SIGTERM stops the run it trains like Ctrl-C (its checkpoint kept, its lock released); Ctrl-C sent to the
  terminal's process group is left to the parent, which stops its workers itself.
- :func:`fault_point`: a test hook. ``ZOO_RL_FAULT=<phase>:<SIGNAL>`` (e.g. ``ranking:SIGKILL``) makes a study
  process send itself that signal when it reaches the named point, once: ``tests/test_faults.py`` stops a
  study in phases too short to hit from outside. Points: ``plan`` (the plan printed), ``ranking`` (a source
  scored and kept), ``training`` (a run's first checkpoint written by this process), ``final-games`` (before a
  run's final games), ``tables`` (``results.csv`` written, the other tables not yet). Unset, a point costs one
  lookup in ``os.environ``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

#: The test hook's environment variable (see :func:`fault_point`).
FAULT_ENV = "ZOO_RL_FAULT"
#: Exit status of a study stopped by a signal (a shell's for Ctrl-C).
STOPPED_STATUS = 130
#: What a second signal prints before the process ends at once.
AT_ONCE_MESSAGE = ("\nStopped at once (second signal): every file was written whole, each run keeps its last "
                   "checkpoint; run the same command to resume.\n")

_STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)


def exit_at_once(signum: int = signal.SIGINT, frame=None) -> None:
    """End the process now (``os._exit``: no cleanup, no waiting for threads or worker pools), after one line.

    Worker processes of ``--workers`` end with it (:func:`worker_init`)."""
    try:
        os.write(2, AT_ONCE_MESSAGE.encode())
    finally:
        os._exit(STOPPED_STATUS)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise ``KeyboardInterrupt`` once; any later one ends the
    process at once (:func:`exit_at_once`). When the block ends, the handlers in place before come back, unless
    a signal stopped it: then the second-signal handler stays, so that the rest of the stop (worker pools, Ray,
    the interpreter's exit) can be cut short. Outside the main thread it changes nothing (Python delivers
    signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signalled = []

    def first_signal(signum: int, frame) -> None:
        signalled.append(signum)
        for s in _STOP_SIGNALS:  # the next one ends the process at once
            signal.signal(s, exit_at_once)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, first_signal) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        if not signalled:
            for s, handler in previous.items():
                signal.signal(s, handler)


def second_signal_exits() -> None:
    """From now on SIGINT and SIGTERM end the process at once (for the last steps of a stopped command)."""
    if threading.current_thread() is threading.main_thread():
        for s in _STOP_SIGNALS:
            signal.signal(s, exit_at_once)


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``);
    returns whether it could. If the parent is already gone, the signal is sent now."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signum), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the parent died before the request: nobody will send it
        os.kill(os.getpid(), signum)
    return True


_in_job = False
_worker_stopped = False


def _worker_stop(signum: int, frame) -> None:
    global _worker_stopped
    _worker_stopped = True
    if _in_job:
        raise KeyboardInterrupt  # the run stops as on Ctrl-C: its checkpoint stays, its lock is released
    os._exit(STOPPED_STATUS)


def worker_init() -> None:
    """Initializer of a study's worker processes: end with the parent (SIGTERM on its death), stop on SIGTERM,
    leave Ctrl-C to the parent (which stops its workers with SIGTERM)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)
    die_with_parent(signal.SIGTERM)


def in_worker_job(function, *args, **kwargs):
    """Call ``function`` in a worker process; SIGTERM meanwhile stops it with ``KeyboardInterrupt`` and, once the
    function has cleaned up, ends the process (a pool worker would otherwise wait for its next job, and its
    parent may be gone)."""
    global _in_job
    _in_job = True
    try:
        return function(*args, **kwargs)
    except KeyboardInterrupt:
        if _worker_stopped:
            os._exit(STOPPED_STATUS)
        raise
    finally:
        _in_job = False


def fault_point(phase: str) -> None:
    """The test hook (module docstring): send this process the signal ``ZOO_RL_FAULT`` names for ``phase``."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, signame = wanted.partition(":")
    if name != phase:
        return
    del os.environ[FAULT_ENV]  # once per process
    os.kill(os.getpid(), getattr(signal, signame or "SIGINT"))
