"""Training sources: a short run writes a loadable source; interrupted runs resume; the committed zoo loads."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO

from envs.atari import make_atari
from zoo_rl.sources import load_source, load_zoo, sha256_of
from zoo_rl.training import CHECKPOINT, EVALUATIONS, RunSpec, load_hyperparams, parse_value, train_run
from zoo_rl.zoo_training import SourceSpec, read_manifest
from conftest import StopAt

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "agents" / "zoo"
LAB2D_ZOO = ROOT / "agents" / "zoo-lab2d"
STRONG_ZOO = ROOT / "agents" / "zoo-strong"
COMMITTED = sorted(p.parent for z in (ZOO, LAB2D_ZOO, STRONG_ZOO) for p in z.glob("*/meta.json"))
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
    assert meta["steps"] >= spec.steps or meta.get("stopped_at_target"), "trained all its steps or reached its target"
    # clearly better than random: the gap exceeds twice its standard error over the evaluation games
    gap = meta["eval_return_mean"] - meta["random_return_mean"]
    n = meta["eval_episodes"]
    standard_error = ((meta["eval_return_std"] ** 2 + meta["random_return_std"] ** 2) / n) ** 0.5
    assert gap > 2 * standard_error, f"{folder.name}: {gap:.1f} over random, standard error {standard_error:.1f}"
    load_source(folder)


def test_committed_zoo_matches_manifest():
    """Every committed source is a manifest entry (the zoo is reproducible by `agents/train.py --zoo`)."""
    for zoo in (ZOO, LAB2D_ZOO, STRONG_ZOO):
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


def test_init_loads_every_policy_tensor_and_names_a_mismatch(tmp_path):
    from stable_baselines3 import PPO

    from zoo_rl.sources import read_compact, write_compact
    from zoo_rl.zoo_training import load_policy_state

    model = PPO("CnnPolicy", make_atari("Pong", 1, seed=0, mode=1), n_steps=8, batch_size=8, device="cpu")
    load_policy_state(model, ZOO / "pong-m1")
    state, _ = read_compact(ZOO / "pong-m1")
    policy = model.policy.state_dict()
    assert torch.equal(policy["features_extractor.cnn.0.weight"], state["features.cnn.0.weight"])
    assert torch.equal(policy["pi_features_extractor.linear.0.bias"], state["features.linear.0.bias"])
    assert torch.equal(policy["action_net.weight"], state["head.action_net.weight"])
    heads = {k[5:]: v for k, v in state.items() if k.startswith("head.") and "value_net" not in k}
    write_compact(tmp_path / "headless", {k[9:]: v for k, v in state.items() if k.startswith("features.")}, heads,
                  {"name": "headless"})
    with pytest.raises(ValueError, match="missing.*value_net.weight"):
        load_policy_state(model, tmp_path / "headless")


def test_init_must_be_a_source_of_the_same_task(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a compact zoo source"):
        SourceSpec(game="Pong", mode=1, init=str(tmp_path)).init_folder()
    with pytest.raises(ValueError, match="same task and algorithm"):
        SourceSpec(game="Breakout", init="agents/zoo/pong-m1").init_folder()
    assert SourceSpec(game="Pong", mode=1, init="agents/zoo/pong-m1").init_folder() == ZOO / "pong-m1"
    (tmp_path / "manifest.yml").write_text("sources:\n  - {game: Pong, mode: 1}\n  - {game: Pong, mode: 1}\n")
    with pytest.raises(ValueError, match="more than once"):
        read_manifest(tmp_path / "manifest.yml")


@pytest.mark.slow
def test_a_continued_source_keeps_the_long_schedule_and_stops_at_its_target(tmp_path, monkeypatch):
    """Continuing agents/zoo/pong-m1 towards 10M steps: the start is evaluated, the learning rate is the 10M
    schedule's at the source's step count, training stops at the first evaluation that reaches the target, and a
    rerun trains no further. Evaluation returns are scripted (full Pong games would take minutes)."""
    from zoo_rl import training, zoo_training
    from zoo_rl.zoo_training import CURVE_FILE, train_source

    hyper = tmp_path / "hyper"
    hyper.mkdir()
    (hyper / "ppo.yml").write_text("atari:\n  policy: CnnPolicy\n  n_envs: 2\n  n_steps: 32\n  batch_size: 64\n"
                                   "  n_epochs: 1\n  learning_rate: lin_2.5e-4\n  clip_range: lin_0.1\n")
    scripted = iter([[-10.0], [16.0]])  # at the start, then at the first evaluation during training
    monkeypatch.setattr(training, "evaluate_policy", lambda *a, **k: (next(scripted), [100]))
    monkeypatch.setattr(zoo_training, "evaluate_policy", lambda *a, **k: ([16.0] * 10, [100] * 10))
    monkeypatch.setattr(zoo_training, "source_random_returns", lambda spec: [-20.0] * 10)
    monkeypatch.setattr(zoo_training, "collect_observations", lambda env, n: np.zeros((8, 84, 84, 4), np.uint8))
    spec = SourceSpec(game="Pong", mode=1, steps=10_000_000, init="agents/zoo/pong-m1", target_return=15,
                      eval_every=256, eval_episodes=1)
    start = json.loads((ZOO / "pong-m1" / "meta.json").read_text())["steps"]  # 1,000,768
    zoo, runs = tmp_path / "zoo", tmp_path / "runs"
    meta = train_source(spec, zoo_dir=zoo, runs_dir=runs, hyperparams_dir=hyper, device="cpu", verbose=0)
    first_eval = (start // 256 + 1) * 256
    assert meta["steps"] == first_eval and meta["stopped_at_target"] and meta["target_return"] == 15
    assert meta["init"]["steps"] == start and meta["init"]["folder"] == "agents/zoo/pong-m1"
    assert {"cpu_hours", "wall_hours"} <= set(meta) and "--init agents/zoo/pong-m1" in meta["command"]
    curve = pd.read_csv(zoo / "pong-m1" / CURVE_FILE)
    assert curve["steps"].tolist() == [start, first_eval] and curve["return_mean"].tolist() == [-10.0, 16.0]
    model = PPO.load(runs / "pong-m1" / CHECKPOINT, device="cpu")
    last_update = first_eval - 2 * 32  # the update before the rollout in which the evaluation fired
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4 * (1 - last_update / 10_000_000))
    train = load_train_script()
    assert train.is_done(zoo, spec) and not train.is_done(zoo, SourceSpec(game="Pong", mode=1, steps=10_000_000))
    again = train_source(spec, zoo_dir=zoo, runs_dir=runs, hyperparams_dir=hyper, device="cpu", verbose=0)
    assert again["steps"] == first_eval  # it reached its target: a rerun trains no further


def test_parked_checkpoints_keep_the_optimizer_in_bfloat16(tmp_path):
    from stable_baselines3 import PPO

    train = load_train_script()
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, device="cpu", seed=0)
    model.learn(64)
    run = tmp_path / "runs" / "pong-m1"
    run.mkdir(parents=True)
    model.save(run / "checkpoint.zip")
    spec = SourceSpec(game="Pong", mode=1)
    train.park(tmp_path / "runs", tmp_path / "parked", tmp_path / "zoo", [spec])

    def moments(path):
        with zipfile.ZipFile(path) as archive:
            state = torch.load(io.BytesIO(archive.read("policy.optimizer.pth")), weights_only=True)["state"]
        return [v for per in state.values() for k, v in per.items() if k != "step"]

    assert {t.dtype for t in moments(tmp_path / "parked" / "pong-m1" / "checkpoint.zip")} == {torch.bfloat16}
    train.unpark(tmp_path / "fresh", tmp_path / "parked", spec)
    restored = tmp_path / "fresh" / "pong-m1" / "checkpoint.zip"
    original = moments(run / "checkpoint.zip")
    assert all(a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-2, atol=1e-12)
               for a, b in zip(moments(restored), original))
    resumed = PPO.load(restored, device="cpu")
    assert resumed.num_timesteps == model.num_timesteps
    assert all(torch.equal(a, b) for a, b in zip(resumed.policy.state_dict().values(), model.policy.state_dict().values()))


def test_zoo_table_shows_parked_sources_and_draws_their_curves(tmp_path):
    from zoo_rl.training import save_evaluations

    spec = importlib.util.spec_from_file_location("zoo_table", ROOT / "agents" / "zoo_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    (tmp_path / "manifest.yml").write_text("sources:\n  - {game: Pong, mode: 1, steps: 10000000, target_return: 15}\n")
    parked = tmp_path / "_inprogress" / "pong-m1"
    parked.mkdir(parents=True)
    (parked / "status.json").write_text(json.dumps({"num_timesteps": 1_500_000, "cpu_seconds": 7200.0}))
    save_evaluations(parked / EVALUATIONS, {"timesteps": [1_000_000, 1_250_000, 1_500_000],
                                            "results": [[-11.0, -9.0], [-3.0, -1.0], [4.0, 6.0]],
                                            "ep_lengths": [[1, 1]] * 3})
    rows = table.zoo_rows(tmp_path)
    text = table.table(rows)
    assert "| pong-m1 | Pong | mode 1 | 1,500,000 | in training: last evaluation 5.0 ± 1.0 (2 games) |" in text
    assert "| 15 | 2.0 |" in text
    assert text.endswith("1 sources: 2.00 CPU-hours, 1,500,000 agent steps trained in all.")  # no init: from 0
    table.plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
