"""Studies of whole-policy targets (MuJoCo bodies): every method through the study runner, on MLP sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import zoo_rl.study as study_module
from envs.tasks import make_env, resolve
from zoo_rl.sources import write_compact
from zoo_rl.study import StudyConfig, plan, run_study
from zoo_rl.study.config import POLICY_STUDY_NORMALIZE, policy_hyperparams, whole_policy
from zoo_rl.training import sb3_policy_kwargs
from zoo_rl.zoo_policies import ZooPolicyMixin

TARGET = "mujoco:halfcheetah+mass=1.25"
TINY = dict(steps=256, eval_every=256, eval_episodes=1, n_envs=1, seeds=1, rank_steps=16, final_episodes=1, workers=1)


@pytest.fixture(scope="module")
def policy_zoo(tmp_path_factory) -> list[str]:
    """Two compact whole-policy sources of the target's architecture (the hyperparameter file's), different weights."""
    root = tmp_path_factory.mktemp("policy-zoo")
    task = resolve(TARGET)
    params, _, policy = policy_hyperparams("ppo", task)
    env = make_env(task, 1)
    paths = []
    for k, body in enumerate(("mujoco:halfcheetah", "mujoco:halfcheetah+mass=2")):
        model = PPO(policy, env, seed=k, device="cpu", policy_kwargs=sb3_policy_kwargs(params["policy_kwargs"]))
        meta = {"name": f"src{k}", "game": body, "architecture": {"activation": "relu"}}
        write_compact(root / f"src{k}", {}, model.policy.state_dict(), meta)
        paths.append(str(root / f"src{k}"))
    env.close()
    return paths


def test_a_mujoco_target_is_a_whole_policy_study_with_its_own_defaults(policy_zoo, tmp_path):
    assert whole_policy(resolve(TARGET)) and not whole_policy(resolve("Pong"))
    study = StudyConfig(target=TARGET, zoo=policy_zoo, out=tmp_path, **TINY)
    jobs = plan(study)
    assert study.methods == study_module.POLICY_DEFAULT_METHODS and "ensemble" not in study.methods
    assert {j.method for j in jobs} >= {"scratch", "finetune:src0", "finetune:src1", "zoo-lite", "multipolar",
                                         "zoo-lite:ranked+gate-lr100"}
    assert study.lr == pytest.approx(2.0633e-05)  # the hyperparameter file's tuned rate, not the paper's Atari 1e-4
    params, _ = study_module.runs._hyperparams(jobs[0])
    assert params["normalize"] == POLICY_STUDY_NORMALIZE and params["learning_rate"] == study.lr
    with pytest.raises(ValueError, match="ensemble puts NatureCNN extractors side by side"):
        plan(StudyConfig(target=TARGET, zoo=policy_zoo, methods=["ensemble"], out=tmp_path / "e", **TINY))
    with pytest.raises(ValueError, match="MULTIPOLAR aggregates sources acting in the target's own action space"):
        plan(StudyConfig(target="Pong", methods=["multipolar"], out=tmp_path / "m", **TINY))
    with pytest.raises(ValueError, match="multipolar:x: MULTIPOLAR takes no options"):
        plan(StudyConfig(target=TARGET, zoo=policy_zoo, methods=["multipolar:x"], out=tmp_path / "x", **TINY))


def test_a_zoo_that_does_not_fit_the_target_is_refused_before_training(policy_zoo, tmp_path):
    small = tmp_path / "small"
    model = PPO("MlpPolicy", make_env(resolve(TARGET), 1), device="cpu", policy_kwargs=dict(net_arch=[8]))
    write_compact(small, {}, model.policy.state_dict(), {"name": "small"})
    with pytest.raises(ValueError, match="small"):
        plan(StudyConfig(target=TARGET, zoo=[policy_zoo[0], str(small)], methods=["zoo-lite"], out=tmp_path / "s",
                         **TINY))


@pytest.mark.slow
def test_every_method_trains_on_a_mujoco_target(policy_zoo, tmp_path):
    methods = ["scratch", "finetune:src1", "uniform", "zoo", "zoo-lite", "zoo-lite:ranked+gate-lr100", "multipolar",
               "kickstart"]
    results, _ = run_study(StudyConfig(target=TARGET, zoo=policy_zoo, methods=methods, out=tmp_path, **TINY),
                           progress=False)
    assert sorted(results["method"]) == sorted(methods) and np.isfinite(results["final_return"]).all()
    run = lambda method: tmp_path / method.replace(":", "-") / "seed0"  # noqa: E731
    # a fine-tune starts from its source's whole policy: its first evaluation is the source's play
    config = json.loads((run("zoo-lite") / "config.json").read_text())
    assert config["normalize"]["norm_obs"] is False and config["extractor_kwargs"]["gate"] == "lite"
    model = PPO.load(run("zoo-lite") / "final.zip", device="cpu")
    assert isinstance(model.policy, ZooPolicyMixin) and (run("zoo-lite") / "gates.csv").is_file()
    fine = PPO.load(run("finetune:src1") / "final.zip", device="cpu")
    source = torch.load(Path(policy_zoo[1]) / "weights.pt", weights_only=True)
    moved = [k for k, v in fine.policy.state_dict().items() if not torch.equal(v, source[f"head.{k}"])]
    assert moved  # it trained from the source's tensors (same keys, same shapes)
    summary = json.loads((tmp_path / "study.json").read_text())
    assert [s["path"].split("/")[-1] for s in summary["sources"]] == ["src0", "src1"]
