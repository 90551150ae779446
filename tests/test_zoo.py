"""Training sources: a short run writes a loadable source; interrupted runs resume; the committed zoo loads."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from envs.atari import make_atari
from zoo_rl.sources import load_source, load_zoo, sha256_of
from zoo_rl.training import CHECKPOINT, EVALUATIONS, RunSpec, load_hyperparams, parse_value, train_run
from zoo_rl.zoo_training import SourceSpec, read_manifest

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "agents" / "zoo"
LAB2D_ZOO = ROOT / "agents" / "zoo-lab2d"
COMMITTED = sorted(p.parent for z in (ZOO, LAB2D_ZOO) for p in z.glob("*/meta.json"))
TINY_PPO = dict(n_steps=64, batch_size=128, n_epochs=1, learning_rate=2.5e-4)


def test_hyperparams_are_data_not_code(tmp_path):
    (tmp_path / "ppo.yml").write_text("atari:\n  learning_rate: lin_2.5e-4\n  n_envs: 8\nPong:\n  n_envs: 4\n")
    params = load_hyperparams(tmp_path / "ppo.yml", "Pong")
    assert params["n_envs"] == 4
    schedule = parse_value(params["learning_rate"])
    assert schedule(1.0) == pytest.approx(2.5e-4) and schedule(0.5) == pytest.approx(1.25e-4)
    assert parse_value("__import__('os')") == "__import__('os')"


def test_manifest_lists_valid_tasks():
    specs = read_manifest(ZOO / "manifest.yml")
    assert len(specs) >= 5
    tasks = [s.task for s in specs]
    assert any(t.game == "Pong" and (t.mode or t.difficulty) for t in tasks), "one non-default Pong flavour"
    assert all(s.steps >= 1_000_000 for s in specs)
    lab2d = read_manifest(LAB2D_ZOO / "manifest.yml")
    assert len(lab2d) >= 3 and all(s.task.family == "lab2d" for s in lab2d)


class StopAt(BaseCallback):
    """Simulates a kill: raises once training has passed ``steps``."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.steps:
            raise KeyboardInterrupt
        return True


@pytest.mark.slow
def test_interrupted_run_resumes_its_step_count(tmp_path):
    spec = RunSpec(run_dir=tmp_path, algo="ppo", total_steps=1024, hyperparams=TINY_PPO, seed=0,
                   checkpoint_every=256, eval_every=512, eval_episodes=1, device="cpu")
    env = make_atari("Pong", 4, seed=0)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, env, callbacks=[StopAt(600)])
    # the killed call's time is kept with its last checkpoint, so the run's cost counts it
    killed = json.loads((tmp_path / "status.json").read_text())
    assert killed["num_timesteps"] == 512 and killed["wall_seconds"] > 0
    model, _ = train_run(spec, make_atari("Pong", 4, seed=0), eval_env=make_atari("Pong", 1, seed=1))
    assert model.num_timesteps == 1024
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["resumed_from"] == 512  # the last checkpoint before the kill, not a fresh start
    assert status["wall_seconds"] == pytest.approx(killed["wall_seconds"] + status["seconds_this_call"], abs=0.11)
    assert model.policy.optimizer.state_dict()["state"][0]["step"].item() == 8  # 4 rollouts x 2 minibatches
    with np.load(tmp_path / EVALUATIONS) as data:
        assert list(data["timesteps"]) == [1024]


@pytest.mark.slow
def test_train_script_writes_a_loadable_source(tmp_path):
    zoo, runs = tmp_path / "zoo", tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "agents" / "train.py"), "--game", "Pong", "--mode", "1", "--steps", "1024",
           "--eval-every", "1024", "--eval-episodes", "1", "--checkpoint-every", "512",
           "--zoo-dir", str(zoo), "--runs-dir", str(runs)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    folder = zoo / "pong-m1"
    meta = json.loads((folder / "meta.json").read_text())
    for key in ("game", "mode", "algo", "steps", "seed", "eval_return_mean", "eval_return_std",
                "random_return_mean", "command", "versions", "sha256"):
        assert key in meta, key
    assert meta["steps"] >= 1024 and meta["mode"] == 1 and meta["eval_episodes"] >= 10
    assert meta["sha256"] == sha256_of(folder / "weights.pt")
    source = load_source(folder)
    assert source.shape("cnn.0") == (32, 4, 8, 8)
    assert (runs / "pong-m1" / CHECKPOINT).is_file()
    # a second call with more steps resumes the same run
    subprocess.run(cmd[:6] + ["--steps", "2048"] + cmd[8:], check=True, capture_output=True, timeout=600)
    assert json.loads((folder / "meta.json").read_text())["steps"] >= 2048


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_source_loads_and_matches_its_sha(folder):
    meta = json.loads((folder / "meta.json").read_text())
    spec = {s.source_name: s for s in read_manifest(folder.parent / "manifest.yml")}[folder.name]
    assert meta["sha256"] == sha256_of(folder / "weights.pt")
    assert meta["steps"] >= spec.steps
    # clearly better than random: the gap exceeds twice its standard error over the evaluation games
    gap = meta["eval_return_mean"] - meta["random_return_mean"]
    n = meta["eval_episodes"]
    standard_error = ((meta["eval_return_std"] ** 2 + meta["random_return_std"] ** 2) / n) ** 0.5
    assert gap > 2 * standard_error, f"{folder.name}: {gap:.1f} over random, standard error {standard_error:.1f}"
    load_source(folder)


def test_committed_zoo_matches_manifest():
    """Every committed source is a manifest entry (the zoo is reproducible by `agents/train.py --zoo`)."""
    for zoo in (ZOO, LAB2D_ZOO):
        committed = [p for p in COMMITTED if p.parent == zoo]
        names = {s.source_name for s in read_manifest(zoo / "manifest.yml")}
        assert {p.name for p in committed} <= names
        if committed:
            assert len(load_zoo([str(p) for p in committed])) == len(committed)


def test_zoo_dir_defaults_to_the_manifest_folder():
    train = load_train_script()
    assert train.parse_args(["--zoo"]).zoo_dir == ZOO
    assert train.parse_args(["--zoo", "--manifest", str(LAB2D_ZOO / "manifest.yml")]).zoo_dir == LAB2D_ZOO
    assert train.parse_args(["--zoo", "--zoo-dir", "/tmp/z"]).zoo_dir == Path("/tmp/z")


def load_train_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "agents" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_park_and_unpark_carry_a_run_across_machines(tmp_path):
    train = load_train_script()
    spec = SourceSpec(game="Pong", mode=1)
    runs, zoo, parked = tmp_path / "runs", tmp_path / "zoo", tmp_path / "zoo" / "_inprogress"
    run = runs / "pong-m1"
    run.mkdir(parents=True)
    with zipfile.ZipFile(run / "checkpoint.zip", "w") as archive:
        archive.writestr("policy.pth", b"weights" * 100)
    (run / "0.monitor.csv").write_text("r,l,t\n")
    (run / "final.zip").write_bytes(b"not needed to resume")
    train.park(runs, parked, zoo, [spec])
    with zipfile.ZipFile(parked / "pong-m1" / "checkpoint.zip") as archive:  # deflated, same content
        assert archive.read("policy.pth") == b"weights" * 100
        assert archive.getinfo("policy.pth").compress_type == zipfile.ZIP_DEFLATED
    assert (parked / "pong-m1" / "0.monitor.csv").is_file()
    assert not (parked / "pong-m1" / "final.zip").exists()
    fresh = tmp_path / "fresh_runs"  # another machine: no runs/ folder
    train.unpark(fresh, parked, spec)
    assert (fresh / "pong-m1" / "checkpoint.zip").is_file()
    (fresh / "pong-m1" / "checkpoint.zip").write_bytes(b"newer")
    train.unpark(fresh, parked, spec)  # a local checkpoint always wins
    assert (fresh / "pong-m1" / "checkpoint.zip").read_bytes() == b"newer"


class _FixedLength(gym.Env):
    """Episodes of ``length`` steps with reward 1 per step."""

    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length):
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t >= self.length, False, {}


def test_random_returns_count_each_environments_first_games():
    """Not the first n games to end (short ones), but n/num_envs games per environment."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from zoo_rl.zoo_training import random_returns

    env = DummyVecEnv([lambda: Monitor(_FixedLength(1)), lambda: Monitor(_FixedLength(3))])
    assert sorted(random_returns(env, 4, seed=0)) == [1.0, 1.0, 3.0, 3.0]
    assert sorted(random_returns(env, 3, seed=0)) == [1.0, 3.0, 3.0]  # the remainder goes to the last ones


def test_every_evaluation_starts_new_games(tmp_path, monkeypatch):
    import zoo_rl.training as training

    calls = []
    monkeypatch.setattr(training, "restart_games", lambda env: calls.append(("restart", env)))
    monkeypatch.setattr(training, "evaluate_policy",
                        lambda model, env, **kw: calls.append(("evaluate", env)) or ([1.0], [10]))
    eval_env = object()
    evaluator = training.EvalEvery(eval_env, tmp_path / "evaluations.npz", every=10, n_episodes=1,
                                   deterministic=False)
    logger = type("Logger", (), {"record": lambda *a, **k: None})()
    evaluator.model, evaluator.num_timesteps = type("Model", (), {"logger": logger})(), 10
    evaluator.evaluate_now()
    assert calls == [("restart", eval_env), ("evaluate", eval_env)]
