"""The study under faults: each phase x {SIGINT, SIGTERM, SIGKILL}, corrupt files, a full disk, worker processes
whose parent dies, a Ray worker lost mid-run, and study processes sharing a machine's cores.

Every test runs a tiny study (512 agent steps, one evaluation game, 16 ranking steps). The phase x signal
matrix is ``python -m pytest -v tests/test_faults.py -k phase``; docs/studies.md has it as a table.
Signals reach a phase through the study's test hook (``ZOO_RL_FAULT``, zoo_rl/study/signals.py) where the phase
is too short to hit from outside; the ranking and the workers are also stopped from outside, as a terminal would.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import zoo_rl.study.cores as cores
import zoo_rl.study.runs as runs_module
from conftest import random_nature_state
from zoo_rl.sources import write_compact
from zoo_rl.study import RankingProgress, StudyConfig, WorkersLost, cross_target, plan, run_study

ROOT = Path(__file__).resolve().parents[1]
TRANSFER = ROOT / "experiments" / "transfer.py"
PHASES = ["plan", "ranking", "training", "final-games", "tables"]
SIGNALS = ["SIGINT", "SIGTERM", "SIGKILL"]
#: What the stop line says in each phase (SIGINT and SIGTERM; SIGKILL says nothing).
STOP_LINES = {
    "plan": "Stopped while planning: 0/1 runs finished. Run the same command to resume.",
    "ranking": "Stopped while ranking the sources (1 of 2 sources scored, kept in",
    "training": "Stopped: 0/1 runs finished; finetune:breakout seed 0 at its checkpoint of step 256. Run the same "
                "command to resume",
    "final-games": "Stopped: 0/1 runs finished; finetune:breakout seed 0 trained to step 512, its final games to play. "
                   "Run the same command to resume",
    "tables": "Stopped while writing the tables: 1/1 runs finished. Run the same command to resume: the tables are "
              "rewritten",
}
METHOD = "finetune:breakout"
TINY = dict(target="Pong", methods=[METHOD], seeds=1, steps=512, eval_every=256, eval_episodes=1, n_envs=2,
            final_episodes=1, rank_steps=16, workers=1)


@pytest.fixture(autouse=True)
def own_registry(tmp_path, monkeypatch):
    """Study processes register in a folder of the test's own (others on the machine do not count), with one
    torch thread per run (CI's two cores run the tests and their studies)."""
    monkeypatch.setenv(cores.REGISTRY_ENV, str(tmp_path / "registry"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> list[str]:
    """Two sources: one that plays Pong zero-shot (a Breakout agent's head), one scored by the probe alone."""
    root = tmp_path_factory.mktemp("faults-zoo")
    write_compact(root / "breakout", random_nature_state(0),
                  {"action_net.weight": torch.zeros(4, 512), "action_net.bias": torch.zeros(4)}, {"game": "Breakout"})
    write_compact(root / "plain", random_nature_state(1), {}, {})
    return [str(root / "breakout"), str(root / "plain")]


def config(out: Path, zoo: list[str], **changes) -> StudyConfig:
    return StudyConfig(zoo=zoo, out=out, **dict(TINY, **changes))


def command(out: Path, zoo: list[str]) -> list[str]:
    """The CLI command of :func:`config`."""
    return [sys.executable, str(TRANSFER), "--target", "Pong", "--zoo", *zoo, "--methods", METHOD, "--seeds", "1",
            "--steps", "512", "--eval-every", "256", "--eval-episodes", "1", "--n-envs", "2", "--final-episodes", "1",
            "--rank-steps", "16", "--workers", "1", "--out", str(out)]


@pytest.fixture(scope="module")
def reference(zoo, tmp_path_factory) -> Path:
    """The same study, never interrupted."""
    out = tmp_path_factory.mktemp("faults-reference") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cores.REGISTRY_ENV, str(out.parent / "registry"))
        patch.setenv("OMP_NUM_THREADS", "1")
        run_study(config(out, zoo), progress=False)
    return out


def run_dir(out: Path) -> Path:
    return out / METHOD.replace(":", "-") / "seed0"


def assert_same_rows(out: Path, reference: Path) -> None:
    """``out`` holds the rows an uninterrupted study of the same seeds holds, each once, and nothing half-done."""
    keys = ["target", "method", "seed", "steps", "final_episodes"]
    results, expected = pd.read_csv(out / "results.csv"), pd.read_csv(reference / "results.csv")
    assert list(results.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(results[keys], expected[keys])
    summary, expected_summary = pd.read_csv(out / "summary.csv"), pd.read_csv(reference / "summary.csv")
    pd.testing.assert_frame_equal(summary[["method", "runs"]], expected_summary[["method", "runs"]])
    curves = pd.read_csv(out / "curves.csv")
    pd.testing.assert_frame_equal(curves[["method", "seed", "steps"]],
                                  pd.read_csv(reference / "curves.csv")[["method", "seed", "steps"]])
    ranking = pd.read_csv(out / "ranking.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ranking, pd.read_csv(reference / "ranking.csv").drop(columns="seconds"))
    with np.load(run_dir(out) / "evaluations.npz") as ev:
        assert list(ev["timesteps"]) == [0, 256, 512]  # no evaluation repeated
    assert len(json.loads((run_dir(out) / "final_evaluation.json").read_text())["returns"]) == 1
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name in
                 ("ranking.partial.csv", "checkpoint.zip")]
    assert leftovers == []


def check_stopped(phase: str, signame: str, result: subprocess.CompletedProcess, out: Path) -> None:
    """What a study stopped by ``signame`` at ``phase`` printed and left on disk."""
    printed = result.stdout
    assert result.returncode == (-signal.SIGKILL if signame == "SIGKILL" else 130), printed + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if signame != "SIGKILL":
        assert STOP_LINES[phase] in printed, printed
    run = run_dir(out)
    assert not list(out.rglob("*.tmp"))  # nothing half-written
    if phase == "plan":
        assert (out / "study.json").is_file() and not run.exists() and not (out / "ranking.csv").exists()
    elif phase == "ranking":
        partial = pd.read_csv(out / "ranking.partial.csv")
        assert list(partial["source"]) == ["breakout"] and not (out / "ranking.csv").exists()
    elif phase == "training":
        assert "ranking: kept 1 of 2 sources scored before (breakout); playing the other 1" in printed, printed
        assert "| breakout at" not in result.stderr and "| random policy at" in result.stderr  # not played again
        assert (out / "ranking.csv").is_file() and not (out / "ranking.partial.csv").exists()
        assert json.loads((run / "status.json").read_text())["num_timesteps"] == 256
        assert not (run / "result.json").exists()
    elif phase == "final-games":
        assert "resumes finetune:breakout seed 0 from step 256" in printed, printed
        assert json.loads((run / "status.json").read_text())["num_timesteps"] == 512
        assert (run / "checkpoint.zip").is_file() and not (run / "final_evaluation.json").exists()
        assert not (run / "result.json").exists()
    elif phase == "tables":
        assert (run / "result.json").is_file() and (run / "final_evaluation.json").is_file()
        assert len(pd.read_csv(out / "results.csv")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("signame", SIGNALS)
def test_each_phase_stops_on_a_signal_and_the_rerun_finishes_the_same_rows(signame, zoo, reference, tmp_path):
    """One study folder stopped by ``signame`` in each phase in turn (each stop a new process, as a user
    running the command again), then finished: the rows of the uninterrupted study, each once."""
    out = tmp_path / "study"
    for phase in PHASES:
        env = dict(os.environ, ZOO_RL_FAULT=f"{phase}:{signame}")
        result = subprocess.run(command(out, zoo), capture_output=True, text=True, env=env, timeout=300)
        check_stopped(phase, signame, result, out)
    run_study(config(out, zoo), progress=False)
    assert_same_rows(out, reference)


@pytest.mark.slow
def test_ctrl_c_in_the_ranking_stops_it_within_seconds(zoo, tmp_path):
    """Ctrl-C from the terminal (SIGINT to the process group) while the ranking plays: the progress line says
    which policy plays, how far, and an ETA; the stop line comes within seconds and says what the rerun keeps."""
    import threading

    out = tmp_path / "study"
    cmd = command(out, zoo)
    cmd[cmd.index("--rank-steps") + 1] = "400000"  # long enough to be stopped while playing
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    streams: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}

    def read(name: str, pipe) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            streams[name] += chunk

    readers = [threading.Thread(target=read, args=(n, pipe), daemon=True)
               for n, pipe in (("out", process.stdout), ("err", process.stderr))]
    for reader in readers:
        reader.start()
    deadline = time.time() + 180
    while b"| random policy at " not in streams["err"] and time.time() < deadline:  # the random policy plays
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stopped = time.time()
    process.wait(timeout=60)
    took = time.time() - stopped
    for reader in readers:
        reader.join(timeout=10)
    printed, errors = streams["out"].decode(), streams["err"].decode()
    assert process.returncode == 130 and took < 10, printed + errors
    assert ("Stopped while ranking the sources (0 of 2 sources scored): 0/1 runs finished. Run the same command "
            "to resume: the sources scored are kept and only the others are played, then the runs train.") in printed
    assert "Pong: ranking the sources, 0/2 scored | random policy at " in errors and "/400,000 steps | ETA " in errors
    assert "Traceback" not in errors
    assert not (out / "ranking.csv").exists() and not list(out.rglob("*.tmp"))


def test_a_second_signal_ends_the_process_at_once():
    code = ("import time\nfrom zoo_rl.study.signals import stop_on_signals\ntry:\n    with stop_on_signals():\n"
            "        print('ready', flush=True)\n        time.sleep(60)\nexcept KeyboardInterrupt:\n"
            "    print('stopping', flush=True)\n    time.sleep(60)  # a slow cleanup\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    assert process.stdout.readline().strip() == "stopping"
    started = time.time()
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 130 and time.time() - started < 5
    assert "Stopped at once (second signal)" in errors and "Traceback" not in errors


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def worker_pids(out: Path, seeds: int, timeout: float = 180) -> list[int]:
    """The pids of the processes training each run (from their progress.json), once every run has a checkpoint."""
    deadline = time.time() + timeout
    runs = [out / "scratch" / f"seed{s}" for s in range(seeds)]
    while time.time() < deadline:
        try:
            if all((r / "status.json").is_file() for r in runs):
                return [json.loads((r / "progress.json").read_text())["pid"] for r in runs]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint in every run of {out}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers end with their parent on Linux")
@pytest.mark.parametrize("stop", ["SIGINT to the group", "SIGKILL to the parent", "SIGKILL to a worker"])
def test_workers_end_with_the_study_process(stop, tmp_path):
    """--workers 2: Ctrl-C (SIGINT to the process group) stops the parent and its workers, with the stop line;
    the parent killed outright (SIGKILL) takes its workers with it (no orphan keeps training or holding a lock);
    a worker killed from outside (the out-of-memory killer) stops the study, which names the runs to resume."""
    out = tmp_path / "study"
    cmd = [sys.executable, str(TRANSFER), "--target", "Pong", "--methods", "scratch", "--seeds", "2", "--steps",
           "100000", "--eval-every", "256", "--eval-episodes", "1", "--n-envs", "2", "--final-episodes", "0",
           "--workers", "2", "--out", str(out)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        workers = worker_pids(out, seeds=2)
        assert process.pid not in workers and len(set(workers)) == 2
        if stop == "SIGKILL to the parent":
            process.kill()
        elif stop == "SIGKILL to a worker":
            os.kill(max(workers), signal.SIGKILL)  # the last one started: the one the pool itself can miss
        else:
            os.killpg(process.pid, signal.SIGINT)
        printed, errors = process.communicate(timeout=60)
        deadline = time.time() + 20
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "a worker outlived the study process"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    if stop != "SIGKILL to the parent":
        assert process.returncode == (130 if stop == "SIGINT to the group" else 1), printed + errors
        assert "Stopped: 0/2 runs finished; scratch seed 0 at its checkpoint of step" in printed, printed
        assert "scratch seed 1 at its checkpoint of step" in printed and "Run the same command to resume" in printed
        assert "Traceback" not in errors, errors
    if stop == "SIGKILL to a worker":
        assert "A worker process died" in printed and "keep their last checkpoints" in printed
    for seed in range(2):  # each run's lock is free again: the next launch resumes it
        with runs_module.run_lock(out / "scratch" / f"seed{seed}") as free:
            assert free


def unfinish(out: Path) -> Path:
    """Make the copied study's run unfinished (as if stopped before its result), with a checkpoint."""
    run = run_dir(out)
    (run / "result.json").unlink()
    shutil.copy(run / "final.zip", run / "checkpoint.zip")
    return run


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
@pytest.mark.parametrize("name, damage, message", [
    ("status.json", "truncate", r"status\.json is unreadable .*delete the folder .* or delete .*status\.json"),
    ("evaluations.npz", "truncate", r"evaluations\.npz is unreadable .*delete the folder .*seed0 to train this run again"),
    ("config.json", "garbage", r"config\.json is unreadable .*delete .*config\.json, which the rerun writes again"),
    ("result.json", "truncate", r"result\.json is unreadable .*delete the folder .*seed0 to train this run again"),
    ("final_evaluation.json", "truncate", r"final_evaluation\.json is unreadable .*reevaluate\.py"),
])
def test_a_corrupt_run_file_names_the_file_and_the_fix(name, damage, message, zoo, reference, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    run = run_dir(out)
    if name in ("status.json", "config.json"):  # read while a run is unfinished
        unfinish(out)
    path = run / name
    truncate(path) if damage == "truncate" else path.write_bytes(b"\x00\xffnot json")
    with pytest.raises(ValueError, match=message):
        plan(config(out, zoo))
    import transfer

    with pytest.raises(SystemExit) as stopped:  # the command line says the same, before anything trains
        transfer.main(command(out, zoo)[2:])
    assert str(stopped.value.code).startswith("error: ") and name in str(stopped.value.code)


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", [
    ("ranking.csv", "truncate"), ("ranking.partial.csv", "truncate"), ("results.csv", "truncate"),
    ("results.csv", "garbage"), ("summary.csv", "truncate"), ("curves.csv", "garbage"),
])
def test_a_corrupt_study_table_is_computed_again(name, damage, zoo, reference, tmp_path, capsys):
    """The study's own tables (and its ranking) are rebuilt from what they are computed from, never read as
    they are: the rerun of a finished study gives the same rows again."""
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    path = out / name
    if name == "ranking.partial.csv":  # a stopped ranking's partial file cut short, beside a garbled ranking.csv
        path.write_text("target,rank_steps,source\nPong,16,breakout\n")
        (out / "ranking.csv").write_bytes(b"\x00\xff,garbage\n")
    truncate(path) if damage == "truncate" else path.write_bytes(b"\x00\xff,garbage\n")
    run_study(config(out, zoo), progress=True)
    printed = capsys.readouterr().out
    if name.startswith("ranking"):
        assert "ranking.csv " in printed and ": ranking the sources again" in printed
    if name == "ranking.partial.csv":
        assert "ranking.partial.csv cannot be read" in printed and "scoring every source again" in printed
    assert_same_rows(out, reference)


@pytest.mark.slow
def test_a_corrupt_results_csv_of_another_study_names_it_and_the_fix(reference, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    truncate(out / "results.csv")
    with pytest.raises(ValueError, match=r"results\.csv is unreadable .*rebuilds results\.csv from the run folders"):
        cross_target([out])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names the file of a descriptor through /proc")
def test_a_full_disk_loses_nothing_written_before(zoo, reference, tmp_path, monkeypatch, capsys):
    """A run trained to the end, its final model, games and result still to write, and every write into its
    folder fails (a full disk, simulated at fsync): the study stops with a line that says so, every file is as it
    was, and the rerun, with space again, finishes the same rows."""
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    run = unfinish(out)
    (run / "final_evaluation.json").unlink()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    real_fsync = os.fsync
    failed: list[str] = []

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if not name.startswith(str(run)):
            return real_fsync(fd)
        failed.append(name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as full:
        run_study(config(out, zoo), progress=True)
    assert full.value.errno == errno.ENOSPC and failed and failed[0].startswith(str(run / ".final.zip."))
    printed = capsys.readouterr().out
    assert ("Stopped (the disk is full: No space left on device; every file written before is whole): 0/1 runs "
            "finished; finetune:breakout seed 0 trained to step 512, its final games to play. Free some space, then "
            "run the same command to resume") in printed
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert set(before) <= set(after)  # nothing lost
    changed = [p.name for p in after if p not in before or after[p] != before[p]]
    assert set(changed) <= {"study.json"}  # the record of the command; no other file touched, no temporary file
    monkeypatch.undo()
    monkeypatch.setenv(cores.REGISTRY_ENV, str(tmp_path / "registry"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_study(config(out, zoo), progress=False)
    assert_same_rows(out, reference)


class FakeRay:
    """The part of Ray's API the launcher uses, running each task in this process when ``ray.get`` asks for it;
    ``lose`` names the runs whose worker dies after the run's first checkpoint (its lock released by the dying
    process, its checkpoint kept: what the operating system leaves of a killed Ray worker)."""

    class RayError(Exception):
        pass

    class RayTaskError(RayError):
        pass

    class WorkerCrashedError(RayError):
        pass

    def __init__(self, lose=(), interrupt: bool = False) -> None:
        from types import SimpleNamespace

        self.exceptions = SimpleNamespace(RayError=self.RayError, RayTaskError=self.RayTaskError,
                                          WorkerCrashedError=self.WorkerCrashedError)
        self.lose, self.interrupt = set(lose), interrupt
        self.cancelled: list = []
        self.calls: list[str] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.calls.append("init")

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def remote(self, num_cpus: int):
        from types import SimpleNamespace

        class Ref:  # an object reference: hashable, by identity
            def __init__(self, *call) -> None:
                self.call = call

        return lambda function: SimpleNamespace(remote=lambda job, threads: Ref(function, job, threads))

    def wait(self, refs, num_returns: int, timeout: float):
        if self.interrupt:
            raise KeyboardInterrupt
        return refs[:1], refs[1:]

    def get(self, ref):
        function, job, threads = ref.call
        if (job.method, job.seed) not in self.lose:
            return function(job, threads)

        class Died(Exception):
            pass

        real = runs_module.ProgressFile

        class DiesAfterItsCheckpoint(real):
            def _on_step(self) -> bool:
                if self.num_timesteps >= 300:
                    raise Died
                return super()._on_step()

        runs_module.ProgressFile = DiesAfterItsCheckpoint
        try:
            function(job, threads)
        except Died:
            raise self.WorkerCrashedError("The worker died unexpectedly while executing this task.") from None
        finally:
            runs_module.ProgressFile = real

    def cancel(self, ref, force: bool = False) -> None:
        self.cancelled.append((ref.call[1].method, ref.call[1].seed, force))


@pytest.mark.slow
def test_a_lost_ray_worker_leaves_its_run_to_the_next_launch(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    study = StudyConfig(zoo=[], out=out, launcher="ray", **dict(TINY, methods=["scratch"], final_episodes=0))
    lost = FakeRay(lose={("scratch", 0)})
    monkeypatch.setitem(sys.modules, "ray", lost)
    with pytest.raises(WorkersLost):
        run_study(study, progress=True)
    printed = capsys.readouterr().out
    assert "Ray lost the workers of scratch seed 0 (WorkerCrashedError): each keeps its last checkpoint, and the " \
           "next launch resumes it." in printed
    assert "Stopped: 0/1 runs finished; scratch seed 0 at its checkpoint of step 256" in printed
    stopped = FakeRay(interrupt=True)  # Ctrl-C while the task runs: cancelled, its worker killed; Ray shut down
    monkeypatch.setitem(sys.modules, "ray", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, progress=False)
    assert stopped.cancelled == [("scratch", 0, True)] and stopped.calls == ["init", "shutdown"]
    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    results, _ = run_study(study, progress=False)
    assert list(results["seed"]) == [0]
    assert json.loads((out / "scratch" / "seed0" / "status.json").read_text())["resumed_from"] == 256
    with np.load(out / "scratch" / "seed0" / "evaluations.npz") as ev:
        assert list(ev["timesteps"]) == [0, 256, 512]


def hold_registration(folder: Path, runs: int, out: str = "runs/other") -> subprocess.Popen:
    """Another study process, as the registry sees it: a process holding the lock of its entry."""
    code = ("import fcntl, json, os, sys, time\n"
            f"path = os.path.join({str(folder)!r}, str(os.getpid()) + '.json')\n"
            "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            "fh = open(path, 'w'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
            f"fh.write(json.dumps({{'pid': os.getpid(), 'runs': {runs}, 'out': {out!r}}})); fh.flush()\n"
            "print('ready', flush=True); time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.skipif(sys.platform == "win32", reason="no registry without fcntl")
def test_study_processes_on_one_machine_share_its_cores(tmp_path, monkeypatch):
    """On 2 cores: a study alone trains two single-thread runs at a time (the plan says so); beside another study
    process it takes the cores left, one thread per run, and says that one process with --workers is better; a
    run follows the registry as processes start and end."""
    monkeypatch.setattr(cores, "machine_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(cores, "RECHECK_SECONDS", -1.0)
    folder = Path(os.environ[cores.REGISTRY_ENV])
    study = StudyConfig(zoo=[], out=tmp_path / "study", **dict(TINY, methods=["scratch"], seeds=3, workers=None))
    jobs = plan(study)
    assert study.workers == 2  # one run per core
    from zoo_rl.study import describe_plan

    text = describe_plan(study, jobs)
    assert "cores: 2; 2 runs at a time, 1 torch thread each (one run per core: the fastest split measured" in text
    assert "estimate: about" in text and "(2 workers;" in text
    with cores.Registration(1, study.out):
        assert cores.run_threads() == 2  # alone, one run: both cores
        other = hold_registration(folder, runs=1)
        try:
            assert [p.runs for p in cores.study_processes()] == [1]
            assert cores.run_threads() == 1  # two runs on the machine: one thread each
            assert cores.default_workers(pending=3) == 1
            split = cores.describe_split(1)
            assert f"sharing the machine with 1 other study process (pid {other.pid}: 1 run in runs/other)" in split
            assert "one process with --workers N" in split
        finally:
            other.kill()
            other.wait()
        assert cores.study_processes() == [] and not (folder / f"{other.pid}.json").exists()  # a dead one's entry
        assert cores.run_threads() == 2  # the cores come back
    assert cores.study_processes(include_self=True) == []


def test_the_ranking_progress_names_the_policy_its_steps_and_an_eta():
    bar = RankingProgress("Pong", sources=5, steps=10_000, kept=2, enabled=False)
    bar.update("random policy", 3_200, 10_000)
    assert bar.description().startswith("Pong: ranking the sources, 2/5 scored | random policy at 3,200/10,000 "
                                        "steps | ETA ")
    # before a few seconds of play: 4 plays of 10k steps (the random policy and 3 sources) less 3,200 at 600/s
    assert bar.eta() == pytest.approx((40_000 - 3_200) / 600)
    bar.update("pong-m1", 1_000, 10_000)
    bar.source_scored()
    assert bar.played() == 11_000 and "3/5 scored | pong-m1 at 1,000/10,000" in bar.description()


@pytest.mark.skipif(sys.platform == "win32", reason="no registry without fcntl")
def test_a_second_process_on_a_study_that_has_every_core_stands_by_and_takes_over(tmp_path, monkeypatch, capsys):
    """Two terminals on one study: while the first trains on every core, the second trains nothing (3 runs on 2
    cores and a second start-up would only slow the first); when the first ends, the second trains what is left."""
    import threading

    from zoo_rl.study.launch import STANDBY_LINE

    monkeypatch.setattr(cores, "machine_cores", lambda: 2)
    out = tmp_path / "study"
    other = hold_registration(Path(os.environ[cores.REGISTRY_ENV]), runs=2, out=str(out))
    killed: list[float] = []

    def end_the_other() -> None:
        killed.append(time.time())
        other.kill()

    timer = threading.Timer(3.0, end_the_other)
    timer.start()
    try:
        study = StudyConfig(zoo=[], out=out, **dict(TINY, methods=["scratch"], workers=None, final_episodes=0))
        results, _ = run_study(study, progress=True, poll_seconds=0.5)
    finally:
        timer.cancel()
        other.kill()
        other.wait()
    assert STANDBY_LINE in capsys.readouterr().out
    assert len(results) == 1 and killed
    assert (out / "scratch" / "seed0" / "config.json").stat().st_mtime >= killed[0]  # trained only after
