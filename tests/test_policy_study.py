"""Studies of whole-policy targets (MuJoCo bodies): every method through the study runner, on MLP sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO

import zoo_rl.study as study_module
from envs.tasks import make_env, resolve
from zoo_rl.sources import write_compact
from zoo_rl.study import StudyConfig, plan, run_study
from zoo_rl.study.config import POLICY_STUDY_NORMALIZE, whole_policy
from zoo_rl.zoo_policies import ZooPolicyMixin
from conftest import untrained_policy_zoo

TARGET = "mujoco:halfcheetah+mass=1.25"
TINY = dict(steps=256, eval_every=256, eval_episodes=1, n_envs=1, seeds=1, rank_steps=16, final_episodes=1, workers=1)


@pytest.fixture(scope="module")
def policy_zoo(tmp_path_factory) -> list[str]:
    """Two compact whole-policy sources of the target's architecture (the hyperparameter file's), different weights."""
    return untrained_policy_zoo(tmp_path_factory.mktemp("policy-zoo"), "ppo", TARGET,
                                ("mujoco:halfcheetah", "mujoco:halfcheetah+mass=2"))


def test_a_mujoco_target_is_a_whole_policy_study_with_its_own_defaults(policy_zoo, tmp_path):
    assert whole_policy(resolve(TARGET)) and not whole_policy(resolve("Pong"))
    study = StudyConfig(target=TARGET, zoo=policy_zoo, out=tmp_path, **TINY)
    jobs = plan(study)
    assert study.methods == study_module.POLICY_DEFAULT_METHODS and "ensemble" not in study.methods
    assert {j.method for j in jobs} >= {"scratch", "finetune:src0", "finetune:src1", "zoo-lite", "multipolar",
                                         "zoo-lite:ranked+sigmoid-sum+gate-span1.6", "kickstart",
                                         "zoo-lite:ranked+sigmoid-sum+gate-span1.6+kickstart"}
    assert study.lr == pytest.approx(2.0633e-05)  # the hyperparameter file's tuned rate, not the paper's Atari 1e-4
    params, _ = study_module.runs.run_hyperparams(jobs[0])
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


#: Small stand-ins of agents/hyperparams' whole-policy entries for the diagnostics test: short rollouts, one epoch,
#: narrow networks, a learning rate at which a few updates move every layer.
TINY_HYPERPARAMS = {
    "ppo.yml": """\
mujoco:
  policy: MlpPolicy
  n_envs: 1
  n_steps: 64
  batch_size: 64
  n_epochs: 2
  learning_rate: 1.0e-3
  policy_kwargs: {activation_fn: relu, net_arch: {pi: [16], vf: [16]}}
""",
    "sac.yml": """\
classic:
  policy: MlpPolicy
  n_envs: 1
  learning_rate: 1.0e-3
  learning_starts: 20
  batch_size: 32
  policy_kwargs: {activation_fn: relu, net_arch: [16]}
""",
}


def merged_by_hand(state: dict, path: str, gates) -> torch.Tensor:
    """``sum_k g_k A_k W_k`` of one zoo layer of a saved policy state."""
    bank, align = state[f"{path}.weight"], state.get(f"{path}.align")
    return sum(g * (align[k] @ bank[k] if align is not None else bank[k]) for k, g in enumerate(gates))


@pytest.mark.parametrize("algo, target, methods", [
    ("ppo", TARGET, ["finetune:src0", "zoo-lite", "uniform"]),
    ("sac", "classic:pendulum+g=12", ["finetune:src1", "zoo-lite:ranked+gate-lr100", "zoo"]),
])
def test_diagnostics_of_whole_policy_runs(algo, target, methods, tmp_path, monkeypatch):
    """Every zoo layer of the policy, under its GateLogger name, with every source: the gates the network uses (the
    lite average, 1/K for uniform, the last logged batch mean), drift and moved by hand; a fine-tune per layer."""
    from stable_baselines3 import SAC
    from torch import nn

    import zoo_rl.study.config as config_module
    from zoo_rl.study.diagnostics import diagnose_study, diagnostics_summary
    from zoo_rl.zoo_policies import zoo_layers

    hyper = tmp_path / "hyper"
    hyper.mkdir()
    for name, text in TINY_HYPERPARAMS.items():
        (hyper / name).write_text(text)
    monkeypatch.setattr(config_module, "HYPERPARAMS_DIR", hyper)
    zoo = untrained_policy_zoo(tmp_path / "zoo", algo, target, (target, target))
    out = tmp_path / "study"
    tiny = dict(TINY, steps=128, eval_every=128, final_episodes=0, algo=algo)
    for job in plan(StudyConfig(target=target, zoo=zoo, methods=methods, out=out, **tiny)):
        study_module.run_job(job, threads=1)  # the runs only: the study's tables (bootstrap intervals) take longer
    table = diagnose_study(out)
    run = lambda method: out / method.replace(":", "-") / "seed0"  # noqa: E731
    load = lambda method: (SAC if algo == "sac" else PPO).load(run(method) / "final.zip", device="cpu")  # noqa: E731
    sources = [torch.load(Path(z) / "weights.pt", weights_only=True) for z in zoo]
    original = lambda k, path: sources[k][f"head.{path}.weight"]  # noqa: E731

    assert set(table["method"]) == set(methods)
    for method in methods[1:]:  # the zoo methods
        rows = table[table["method"] == method].set_index(["layer", "source"])
        model = load(method)
        layers = [p for p in zoo_layers(model.policy) if "_target" not in p]
        assert len(layers) >= 4 and sorted(rows.index) == sorted((p, s) for p in layers for s in ("src0", "src1"))
        logged = pd.read_csv(run(method) / "gates.csv")
        assert set(logged["layer"]) == set(layers)  # named as GateLogger names them
        state = model.policy.state_dict()
        for path in layers:
            for k, source in enumerate(("src0", "src1")):
                now, before = state[f"{path}.weight"][k], original(k, path)
                assert rows.loc[(path, source), "drift"] == pytest.approx(
                    float((now - before).norm() / before.norm()), rel=1e-5, abs=1e-7)
        if method == "zoo":  # input-dependent gates: the last batch mean logged
            last = logged[logged["timesteps"] == logged["timesteps"].max()].set_index(["layer", "source"])["gate"]
            assert np.allclose(rows["gate"], last.reindex(rows.index)) and rows["moved"].isna().all()
            continue
        gates = {path: state[f"{path}.running_gates"] for path in layers}  # the lite average (1/K for uniform)
        for path in layers:
            assert np.allclose(rows.loc[path, "gate"].loc[["src0", "src1"]], gates[path].numpy(), atol=1e-7)
        if method == "uniform":
            assert (rows["gate"] == 0.5).all()
        else:
            assert not np.allclose(rows["gate"], 0.5)  # the lite gates left their start
        config = json.loads((run(method) / "config.json").read_text())
        start = config["extractor_kwargs"]["init_gates"] or [0.5, 0.5]  # K = 2: sigmoid 0.5, or 1/K
        for path in (layers[0], layers[-1]):
            before = sum(g * original(k, path) for k, g in enumerate(start))
            by_hand = float((merged_by_hand(state, path, gates[path]) - before).norm())
            assert by_hand > 0 and rows.loc[(path, "src0"), "moved"] == pytest.approx(by_hand, rel=1e-4)

    fine_method = methods[0]
    fine = table[table["method"] == fine_method].set_index("layer")
    model, k = load(fine_method), int(fine_method[-1])
    linear = [p for p, m in model.policy.named_modules() if isinstance(m, nn.Linear) and "_target" not in p]
    assert sorted(fine.index) == sorted(linear) and (fine["source"] == f"src{k}").all() and (fine["gate"] == 1).all()
    state = model.policy.state_dict()
    for path in linear:
        delta = state[f"{path}.weight"] - original(k, path)
        assert fine.loc[path, "moved"] == pytest.approx(float(delta.norm()), rel=1e-5, abs=1e-7)
        assert fine.loc[path, "drift"] == pytest.approx(float(delta.norm() / original(k, path).norm()), rel=1e-5,
                                                        abs=1e-7)
    assert fine["moved"].gt(0).any()
    summary = diagnostics_summary(table)
    assert list(summary[summary["method"] == fine_method]["layer"]) == linear  # the policy's order
