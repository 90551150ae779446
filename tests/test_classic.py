"""Classic control and SAC: Pendulum variants by name, SAC sources that resume with their replay buffer and export
their whole policy, and SAC studies of a classic-control target through the study runner."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.sac.policies import SACPolicy

import zoo_rl.study as study_module
from envs.classic import RANGES
from envs.tasks import env_backend, make_env, resolve, task_from_record
from zoo_rl.files import CHECKPOINT, STATUS
from zoo_rl.policy_sources import load_policy_source
from zoo_rl.ranking import policy_networks, rank_sources
from zoo_rl.study import StudyConfig, plan, run_study
from zoo_rl.study.config import policy_study_lr, whole_policy
from zoo_rl.training import (REPLAY_BUFFER, RunSpec, build_or_resume, hyperparams_for, load_hyperparams, open_run,
                             sb3_policy_kwargs, train_run)
from zoo_rl.zoo_policies import ZooPolicyMixin
from zoo_rl.zoo_training import SourceSpec, collect_observations, read_manifest, train_source
from conftest import StopAt, untrained_policy_zoo

ROOT = Path(__file__).resolve().parents[1]
TARGET = "classic:pendulum+g=12"
#: The `classic` entry of agents/hyperparams/sac.yml, made small: a narrow network, learning after 100 steps.
TINY_SAC = """\
classic:
  policy: MlpPolicy
  n_envs: 1
  learning_rate: 1.0e-3
  buffer_size: 1000000
  learning_starts: 100
  batch_size: 64
  policy_kwargs: {activation_fn: relu, net_arch: [32, 32]}
"""
TINY_STUDY = dict(steps=200, eval_every=200, eval_episodes=1, n_envs=1, seeds=1, rank_steps=16, final_episodes=1,
                  workers=1, algo="sac")


@pytest.fixture
def hyper(tmp_path: Path) -> Path:
    folder = tmp_path / "hyper"
    folder.mkdir()
    (folder / "sac.yml").write_text(TINY_SAC)
    return folder


def test_pendulum_variants_are_named_canonically():
    task = resolve("classic:pendulum+m=1.3+g=12+max_torque=2.5+l=0.80")
    assert task.game == "classic:pendulum+g=12+l=0.8+m=1.3+max_torque=2.5" and task.family == "classic"
    assert task.slug == "classic-pendulum+g=12+l=0.8+m=1.3+max_torque=2.5" and task.env_id == "Pendulum-v1"
    assert resolve(task.slug) == task and task_from_record(asdict(task)) == task and task.same_task(resolve(task.game))
    assert resolve("classic:pendulum+g=10+max_torque=2").game == "classic:pendulum"  # gymnasium's values dropped
    assert task.parameters == {"g": 12.0, "m": 1.3, "l": 0.8, "max_torque": 2.5}
    assert (task.mode, task.difficulty) == (None, None) and env_backend(task, "auto") == "classic"
    assert whole_policy(task)


@pytest.mark.parametrize("name, message", [
    ("classic:cartpole", r"Unknown classic-control system 'cartpole'; the systems are: pendulum"),
    ("classic:pendulum+mass=2", r"Unknown classic-control change 'mass'; the changes are: g \(5\.\.15, .*max_torque"),
    ("classic:pendulum+g=20", r"g=20 is out of range: g takes values from 5 to 15"),
    ("classic:pendulum+l=nan", r"l=nan is out of range"),
    ("classic:pendulum+m=heavy", r"m='heavy' is not a number"),
    ("classic:pendulum+g=10+g=12", r"'g' is given twice"),
    ("classic:pendulum+g", r"write \+name=value"),
])
def test_unknown_or_out_of_range_changes_are_refused_with_the_accepted_ones(name, message):
    with pytest.raises(ValueError, match=message):
        resolve(name)


def test_a_flavour_is_refused():
    with pytest.raises(ValueError, match="no ALE mode or difficulty"):
        resolve("classic:pendulum", mode=1)


def test_the_changes_reach_the_dynamics_and_every_variant_shares_one_action_space():
    task = resolve("classic:pendulum+g=12+l=0.8+m=1.3+max_torque=3")
    env = make_env(task, 2, seed=0)
    plain = make_env(resolve("classic:pendulum"), 1, seed=0)
    assert env.action_space == plain.action_space and env.observation_space == plain.observation_space
    pendulum = env.get_attr("unwrapped")[0]
    assert (pendulum.g, pendulum.m, pendulum.l, pendulum.max_torque) == (12.0, 1.3, 0.8, 3.0)
    env.reset()
    env.step(np.array([[2.0], [-1.0]], dtype=np.float32))
    assert [u.last_u for u in env.get_attr("unwrapped")] == pytest.approx([3.0, -1.5])  # a * max_torque / 2
    steps, done = 1, False
    while not done:
        _, _, dones, infos = env.step(np.zeros((2, 1), dtype=np.float32))
        steps, done = steps + 1, dones[0]
    assert steps == 200 and "episode" in infos[0]  # gymnasium's time limit, Monitor's raw return
    for venv in (env, plain):
        venv.close()
    assert all(low < high for low, high in RANGES.values())


def test_the_classic_entry_is_the_rl_zoo_pendulum_sac():
    path = ROOT / "agents" / "hyperparams" / "sac.yml"
    params = load_hyperparams(path, TARGET, family="classic")
    assert params["policy"] == "MlpPolicy" and params["n_envs"] == 1 and params["learning_rate"] == pytest.approx(1e-3)
    assert "normalize" not in params and params["ent_coef"] == "auto"
    assert sb3_policy_kwargs(params["policy_kwargs"]) == {"activation_fn": torch.nn.ReLU, "net_arch": [64, 64]}
    assert policy_study_lr("sac", resolve(TARGET)) == pytest.approx(1e-3)  # the target's family entry
    with pytest.raises(ValueError, match="no `classic` entry"):
        load_hyperparams(ROOT / "agents" / "hyperparams" / "ppo.yml", TARGET, family="classic")


def test_the_manifest_lists_sac_pendulum_variants():
    specs = read_manifest(ROOT / "agents" / "zoo-pendulum" / "manifest.yml")
    tasks = [s.task for s in specs]
    assert len(specs) >= 5 and all(s.algo == "sac" and t.family == "classic" for s, t in zip(specs, tasks))
    assert all((s.steps, s.seed, s.eval_every, s.eval_episodes) == (20_000, 0, 2_000, 10) for s in specs)
    assert resolve("classic:pendulum") in tasks and not any(t.same_task(resolve(TARGET)) for t in tasks)
    changed = {name for t in tasks for name, _ in t.settings}
    assert changed == {"g", "m", "l", "max_torque"}
    assert len({s.source_name for s in specs}) == len(specs)


def test_a_sac_source_exports_its_whole_policy_and_acts_as_the_model(tmp_path, hyper):
    spec = SourceSpec(game=TARGET, algo="sac", steps=300, eval_every=150, eval_episodes=1, checkpoint_every=150,
                      name="pendulum-g12")
    zoo, runs = tmp_path / "zoo", tmp_path / "runs"
    meta = train_source(spec, zoo_dir=zoo, runs_dir=runs, hyperparams_dir=hyper, device="cpu", verbose=0)
    assert meta["steps"] == 300 and meta["algo"] == "sac" and meta["eval_deterministic"] and meta["dtype"] == "float32"
    assert meta["action_space"] == {"type": "Box", "shape": [1], "low": [-2.0], "high": [2.0]}
    assert meta["architecture"] == {"net_arch": [32, 32], "activation": "relu"} and meta["normalize"] is None
    assert meta["hyperparams"]["buffer_size"] == 300  # capped at the run's steps: it never fills either way
    assert meta["fold_max_action_diff"] == 0.0 and meta["fold_max_value_diff"] == 0.0
    assert meta["fold_check_observations"] == 512 and np.isfinite(meta["random_return_mean"])
    curve = (zoo / spec.source_name / "curve.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curve[1:]] == ["150", "300"]
    weights = torch.load(zoo / spec.source_name / "weights.pt", weights_only=True)
    assert all(k.startswith(("head.actor.", "head.critic.")) for k in weights) and any("log_std" in k for k in weights)
    assert not any("_target" in k for k in weights) and all(v.dtype == torch.float32 for v in weights.values())

    # the exported source in a plain SACPolicy acts and values as the trained model
    model = SAC.load(runs / spec.source_name / CHECKPOINT, device="cpu")
    source = load_policy_source(zoo / spec.source_name)
    assert source.family == "sac"
    plain = SACPolicy(model.observation_space, model.action_space, lambda _: 0.0,
                      **sb3_policy_kwargs({"activation_fn": "relu", "net_arch": [32, 32]}))
    missing, unexpected = plain.load_state_dict(source.state, strict=False)
    assert not unexpected and all(k.startswith("critic_target.") for k in missing)
    obs = collect_observations(make_env(spec.task, 4, seed=7), 64)
    expected, _ = model.predict(obs, deterministic=True)
    actions, _ = plain.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    with torch.no_grad():
        pairs = torch.as_tensor(obs), torch.as_tensor(model.policy.scale_action(expected))
        np.testing.assert_array_equal(torch.cat(plain.critic(*pairs), 1).numpy(),
                                      torch.cat(model.critic(*pairs), 1).numpy())
    # the ranking plays the source as SB3's deterministic predict does
    actor, latent = policy_networks(source, model.observation_space, model.action_space, family="sac")
    with torch.no_grad():
        np.testing.assert_allclose(actor(torch.as_tensor(obs)).numpy(), expected, atol=1e-5)
        assert latent(torch.as_tensor(obs)).shape == (64, 32)


def test_a_killed_sac_run_resumes_with_its_replay_buffer(tmp_path, hyper):
    task = resolve(TARGET)
    params, n_envs, policy = hyperparams_for(hyper / "sac.yml", task)
    spec = RunSpec(run_dir=tmp_path, algo="sac", total_steps=400, hyperparams=params, policy=policy,
                   checkpoint_every=100, device="cpu")

    def opened():
        return open_run(tmp_path, task, n_envs=n_envs, seed=0, backend="gym", eval_episodes=1, record={})

    envs = opened()
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, envs.env, callbacks=[StopAt(250)])
    envs.close()
    assert json.loads((tmp_path / STATUS).read_text())["num_timesteps"] == 200
    envs = opened()
    resumed = build_or_resume(spec, envs.env)
    assert resumed.num_timesteps == 200 and resumed.replay_buffer.pos == 200  # the checkpoint's transitions
    observations = resumed.replay_buffer.observations[:200].copy()
    model, _ = train_run(spec, envs.env)
    envs.close()
    assert model.num_timesteps == 400 and model.replay_buffer.pos == 400
    np.testing.assert_array_equal(model.replay_buffer.observations[:200], observations)  # kept, then added to
    (tmp_path / REPLAY_BUFFER).unlink()
    envs = opened()
    with pytest.raises(ValueError, match="not its replay buffer"):
        build_or_resume(spec, envs.env)
    envs.close()


def test_park_carries_the_replay_buffer(tmp_path):
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "agents" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert REPLAY_BUFFER in train.RESUME_FILES
    run = tmp_path / "runs" / "pendulum"
    run.mkdir(parents=True)
    (run / REPLAY_BUFFER).write_bytes(b"transitions")
    train.copy_run(run, tmp_path / "parked")
    assert (tmp_path / "parked" / REPLAY_BUFFER).read_bytes() == b"transitions"


@pytest.fixture(scope="module")
def sac_zoo(tmp_path_factory) -> list[str]:
    """Two compact SAC sources of the target's architecture (the hyperparameter file's), different weights."""
    return untrained_policy_zoo(tmp_path_factory.mktemp("sac-zoo"), "sac", TARGET,
                                ("classic:pendulum", "classic:pendulum+m=1.5"))


def test_a_sac_study_plans_without_the_on_policy_methods(sac_zoo, tmp_path):
    study = StudyConfig(target=TARGET, zoo=sac_zoo, out=tmp_path, **TINY_STUDY)
    jobs = plan(study)
    assert study.methods == [m for m in study_module.POLICY_DEFAULT_METHODS if m != "multipolar" and "kickstart" not in m]
    assert {j.method for j in jobs} == {"scratch", "finetune:src0", "finetune:src1", "zoo-lite", "zoo-lite:sigmoid-sum",
                                        study_module.POLICY_RANKED}
    assert study.lr == pytest.approx(1e-3)  # sac.yml's classic entry
    params, n_envs = study_module.runs.run_hyperparams(jobs[0])
    assert "normalize" not in params and n_envs == 1 and params["learning_rate"] == study.lr
    assert (params["learning_starts"], params["buffer_size"]) == (20, 200)  # scaled to the budget
    fine = next(j for j in jobs if j.method == "finetune:src0")
    env = make_env(fine.task, 1)
    model = study_module.runs.build_model(fine, env)
    env.close()
    source = torch.load(Path(sac_zoo[0]) / "weights.pt", weights_only=True)
    for key, value in model.policy.state_dict().items():  # the targets start as copies of the source's critics
        np.testing.assert_array_equal(value.numpy(), source[f"head.{key.replace('critic_target.', 'critic.')}"].numpy())


@pytest.mark.parametrize("methods", [["multipolar"], ["kickstart"], ["kickstart:all"], ["zoo-lite:ranked+kickstart"]])
def test_multipolar_and_kickstart_are_refused_for_sac(sac_zoo, tmp_path, methods):
    with pytest.raises(ValueError, match=r"--algo sac cannot train them. MULTIPOLAR is built for PPO"):
        plan(StudyConfig(target=TARGET, zoo=sac_zoo, out=tmp_path, **{**TINY_STUDY, "methods": methods}))


def test_the_ranking_scores_sac_sources_only_when_asked(sac_zoo):
    table = rank_sources(TARGET, sac_zoo, steps=32, n_envs=2, family="sac")
    assert sorted(table["source"]) == ["src0", "src1"] and table["zero_shot_rate"].notna().all()
    assert table["probe_r2"].notna().all() and (table["zero_shot_rate"] < 0).all()  # Pendulum's costs
    with pytest.raises(ValueError, match="is a SAC policy: the whole-policy ranking scores actor-critic sources"):
        rank_sources(TARGET, sac_zoo, steps=32, n_envs=2)


@pytest.mark.slow
def test_a_sac_study_trains_scratch_finetune_and_zoo_lite(sac_zoo, tmp_path):
    methods = ["scratch", "finetune:src1", "zoo-lite", "zoo-lite:ranked"]
    results, _ = run_study(StudyConfig(target=TARGET, zoo=sac_zoo, methods=methods, out=tmp_path, **TINY_STUDY),
                           progress=False)
    assert sorted(results["method"]) == sorted(methods) and np.isfinite(results["final_return"]).all()
    run = lambda method: tmp_path / method.replace(":", "-") / "seed0"  # noqa: E731
    assert all((run(m) / "final.zip").is_file() and not (run(m) / REPLAY_BUFFER).exists() for m in methods)
    lite = SAC.load(run("zoo-lite") / "final.zip", device="cpu")
    assert isinstance(lite.policy, ZooPolicyMixin) and (run("zoo-lite") / "gates.csv").is_file()
    fine = SAC.load(run("finetune:src1") / "final.zip", device="cpu")
    source = torch.load(Path(sac_zoo[1]) / "weights.pt", weights_only=True)
    online = {k: v for k, v in fine.policy.state_dict().items() if "_target" not in k}
    assert set(online) == {k[len("head."):] for k in source}  # the source's every tensor, and only those
    assert any(not torch.equal(v, source[f"head.{k}"]) for k, v in online.items())  # then trained
    ranking = (tmp_path / "ranking.csv").read_text()
    assert "src0" in ranking and "src1" in ranking


def test_sac_is_refused_on_a_discrete_action_target(tmp_path):
    with pytest.raises(ValueError, match="--algo sac acts in continuous action spaces"):
        plan(StudyConfig(target="Pong", methods=["scratch"], out=tmp_path, **TINY_STUDY))


def test_a_whole_policy_plan_sizes_its_runs_by_the_sources_networks(sac_zoo):
    """Disk estimates count the sources' own layers (Pendulum: 3 inputs, 1 action, 64x64), not NatureCNN's."""
    from zoo_rl.study.progress import network_size, run_bytes

    actor = [(3, 64), (64, 64), (64, 1), (64, 1)]  # latent_pi, mu, log_std
    critic = 2 * [(4, 64), (64, 64), (64, 1)]  # two Q networks on the observation and the action
    layers = actor + critic
    params, align = network_size(sac_zoo, whole=True)
    assert params == sum(i * o + o for i, o in layers)
    assert align == {True: sum(o * o for _, o in layers), "conv": 0, False: 0}
    assert run_bytes("scratch", 2, (params, align)) == 12 * params
    assert run_bytes("zoo-lite:noalign", 2, (params, align)) == 12 * 2 * params
    assert network_size(sac_zoo, whole=False) == network_size([], whole=True)  # an extractor zoo: NatureCNN's
