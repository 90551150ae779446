"""A study's finished runs, parked compactly in the repository, and taken up again by the same command.

A study of tens of runs can outlive the machine it started on: the next machine starts with an empty
``runs/``. ``python experiments/transfer.py <the study's arguments> --park`` packs every finished run of the
study folder into ``results/_inprogress/<study folder name>.tar.gz``, a file small enough to commit; the same
``transfer.py`` command without ``--park``, on any machine, unpacks it into the study folder before it plans, so
that the finished runs are skipped and only the others train. (Source training parks the same way:
``agents/train.py --park``.)

What a parked run keeps: everything its tables and plots read (``config.json``, ``result.json``,
``final_evaluation.json``, ``evaluations.npz``, ``status.json``, ``gates.csv``, its Monitor CSVs) and its
``diagnostics.csv``, computed from its final model while that is still there (:func:`zoo_rl.study.diagnostics.
diagnose_run`, which reads it back when ``final.zip`` is gone). What it leaves: ``final.zip`` (the model, tens of
MB for a zoo method; a parked run can no longer be re-evaluated or exported), the TensorBoard logs, locks and
progress files. Unfinished runs are not parked: they train again from their start, so a park loses at most the
runs in training, which is why a study is parked between runs where it can be (it stops cleanly on Ctrl-C).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path, PurePosixPath

from zoo_rl.files import (CONFIG, EVALUATIONS, FINAL, FINAL_EVALUATION, GATES, LOCK, RANKING, RESULT, RUN_DIAGNOSTICS,
                          STATUS, STUDY, atomic_write_bytes, file_lock, write_csv_atomic)

#: Where parked studies lie, one archive per study folder name.
PARKED_DIR = Path(__file__).resolve().parents[2] / "results" / "_inprogress"
#: The files of a finished run that a park keeps (and its Monitor CSVs, ``*.monitor.csv``).
RUN_FILES = (CONFIG, RESULT, FINAL_EVALUATION, EVALUATIONS, STATUS, GATES, RUN_DIAGNOSTICS)
#: The files of the study folder that a park keeps (its tables are rebuilt from the runs).
STUDY_FILES = (STUDY, RANKING)


def parked_path(out: str | Path) -> Path:
    """The archive that parks the study folder ``out``."""
    return PARKED_DIR / f"{Path(out).name}.tar.gz"


def _finished_runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob(f"*/seed*/{RESULT}"))


def park_study(out: str | Path, archive: str | Path | None = None) -> tuple[Path, int, list[Path]]:
    """Pack the finished runs of the study folder ``out`` into ``archive`` (default :func:`parked_path`), written
    atomically: ``(archive, runs parked, unfinished run folders left out)``. A run's ``diagnostics.csv`` is computed
    first from its final model, where that is still there and the file is not.

    :raises ValueError: ``out`` holds no study, or no finished run.
    """
    from zoo_rl.study.diagnostics import diagnose_run

    out = Path(out)
    if not (out / STUDY).is_file():
        raise ValueError(f"{out} holds no study ({STUDY}): name the study folder the study trained in (--out).")
    runs = _finished_runs(out)
    if not runs:
        raise ValueError(f"{out} has no finished run to park (a run is finished once its {RESULT} is written); "
                         "its runs in training would start again anyway.")
    for run in runs:
        if (run / FINAL).is_file() and not (run / RUN_DIAGNOSTICS).is_file():
            write_csv_atomic(diagnose_run(run), run / RUN_DIAGNOSTICS)
    unfinished = sorted(p.parent for p in out.glob(f"*/seed*/{CONFIG}") if not (p.parent / RESULT).is_file())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in STUDY_FILES:
            if (out / name).is_file():
                tar.add(out / name, arcname=name)
        for run in runs:
            for path in sorted(run.iterdir()):
                if path.is_file() and (path.name in RUN_FILES or path.name.endswith(".monitor.csv")):
                    tar.add(path, arcname=str(path.relative_to(out)))
    archive = Path(archive) if archive is not None else parked_path(out)
    atomic_write_bytes(archive, buffer.getvalue())
    return archive, len(runs), unfinished


def _members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's regular files, each a relative path inside the study folder."""
    members = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if not member.isfile() or path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{archive} holds {member.name!r}, which is not a file inside a study folder: it is "
                             "no parked study (they are written by experiments/transfer.py --park).")
        members.append(member)
    return members


def unpark_study(out: str | Path, target: str | None = None, archive: str | Path | None = None) -> int:
    """Unpack the parked runs of study folder ``out`` (from ``archive``, default :func:`parked_path`) that ``out``
    does not hold finished; returns how many runs were unpacked (0 without an archive). A finished run of ``out``
    is kept as it is; a run in training there (its folder, not finished, its lock free) is replaced by the parked
    finished run; a run another process is training is left to it. Each run's ``result.json`` is written last,
    so an unpack cut short leaves no run that looks finished without its files. The study folder's own files are
    unpacked only where ``out`` has none.

    :raises ValueError: the parked study is of another target than ``target`` (given), or the archive is no park.
    """
    import shutil

    out = Path(out)
    archive = Path(archive) if archive is not None else parked_path(out)
    if not archive.is_file():
        return 0
    with tarfile.open(archive, mode="r:gz") as tar:
        members = _members(tar, archive)
        by_name = {m.name: m for m in members}
        if target is not None and STUDY in by_name:
            parked = json.loads(tar.extractfile(by_name[STUDY]).read())
            if parked.get("target") not in (None, target):
                raise ValueError(f"{archive} parks a study of target {parked.get('target')!r}, not {target!r}: name "
                                 "another study folder (--out) for this one, or move the archive away.")
        for name in STUDY_FILES:
            if name in by_name and not (out / name).is_file():
                atomic_write_bytes(out / name, tar.extractfile(by_name[name]).read())
        runs: dict[str, list[tarfile.TarInfo]] = {}
        for member in members:
            path = PurePosixPath(member.name)
            if len(path.parts) > 1:
                runs.setdefault(str(path.parent), []).append(member)
        taken = 0
        for run, files in sorted(runs.items()):
            run_dir = out / run
            if (run_dir / RESULT).is_file() or not any(PurePosixPath(f.name).name == RESULT for f in files):
                continue
            with file_lock(run_dir / LOCK, wait=False) as free:
                if not free:
                    continue
                for stale in run_dir.iterdir():  # a run in training here: the parked finished run replaces it
                    if stale.name != LOCK:
                        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
                for member in sorted(files, key=lambda m: PurePosixPath(m.name).name == RESULT):
                    atomic_write_bytes(out / member.name, tar.extractfile(member).read())
            taken += 1
    return taken
