"""The files zoo-rl writes: their names, and the writers that make every one of them atomic.

A reader (another process, a plotting script, a rerun after a kill) sees a file's old content or its new
content, never half of it: every writer here writes a temporary file in the same folder and renames it.

A run folder (:mod:`zoo_rl.training`) holds :data:`CONFIG`, :data:`CHECKPOINT`, :data:`STATUS`,
:data:`EVALUATIONS`, Monitor CSVs, :data:`TENSORBOARD` and, once finished, :data:`FINAL`. A study run adds
:data:`PROGRESS`, :data:`GATES`, :data:`FINAL_EVALUATION`, :data:`RESULT` and :data:`LOCK`; a study folder
(:mod:`zoo_rl.study`) holds :data:`STUDY`, :data:`RANKING` (with :data:`RANKING_PARTIAL` while the ranking is
not finished) and the tables :data:`RESULTS`, :data:`SUMMARY`, :data:`CURVES` and :data:`GATES`.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# A run's files.
CONFIG = "config.json"  #: resolved configuration and the command that started the run
CHECKPOINT = "checkpoint.zip"  #: latest SB3 save (weights, optimizer, step count); removed once finished
STATUS = "status.json"  #: step count and wall time of the checkpoint
VEC_NORMALIZE = "vecnormalize.pkl"  #: VecNormalize statistics saved with the checkpoint (the RL Zoo's name)
REPLAY_BUFFER = "replay_buffer.pkl"  #: an off-policy run's replay buffer, saved with the checkpoint
EVALUATIONS = "evaluations.npz"  #: SB3 EvalCallback layout: timesteps, results, ep_lengths
TENSORBOARD = "tensorboard"  #: SB3's TensorBoard logs (a folder)
FINAL = "final.zip"  #: the finished model
PROGRESS = "progress.json"  #: steps done, after every rollout (the study's progress line reads it)
FINAL_EVALUATION = "final_evaluation.json"  #: the final model's games on new episodes
RESULT = "result.json"  #: the finished run's row of results.csv (written last)
RUN_DIAGNOSTICS = "diagnostics.csv"  #: a parked run's diagnostics, computed before its final model was left out
LOCK = ".lock"  #: held by the process that trains the run

# A study's files.
STUDY = "study.json"  #: the resolved StudyConfig and every command that trained the folder
RANKING = "ranking.csv"  #: the sources ranked for the target (zoo_rl.ranking)
RANKING_PARTIAL = "ranking.partial.csv"  #: the sources scored so far by a ranking not finished yet
RESULTS = "results.csv"  #: one row per finished run
SUMMARY = "summary.csv"  #: one row per method
CURVES = "curves.csv"  #: every evaluation of every run
GATES = "gates.csv"  #: gate values over training (per run, and all runs in the study folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold spelt out: classes by their dotted name, the rest by repr."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys (:func:`to_jsonable`), atomically."""
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())


def write_csv_atomic(table: Any, path: str | Path) -> None:
    """A pandas DataFrame as CSV without its index, atomically."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())


def save_model_atomic(model: Any, path: str | Path) -> None:
    """An SB3 model's ``save`` into memory, then :func:`atomic_write_bytes`: a reader never sees half a zip."""
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def command_line() -> str:
    """The command this process runs, quoted for a shell (recorded beside what it writes)."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` while the block runs, waiting for it (``wait``) or yielding False
    at once when another process holds it. The operating system releases the lock when its process dies,
    however it dies, so a killed process never leaves a stale lock. Without ``fcntl`` (Windows) it yields True
    and locks nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield True
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
