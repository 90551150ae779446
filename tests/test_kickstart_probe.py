"""experiments/kickstart_probe.py: what a kickstarted student is taught and how close it gets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import untrained_policy_zoo
from envs.tasks import make_env
from kickstart_probe import acting, play, probe_student, random_acting, teacher_table
from zoo_rl.files import RANKING
from zoo_rl.study import StudyConfig, plan
from zoo_rl.study.runs import study_teachers

TARGET = "mujoco:halfcheetah+mass=1.25"


@pytest.fixture(scope="module")
def policy_zoo(tmp_path_factory) -> list[str]:
    return untrained_policy_zoo(tmp_path_factory.mktemp("probe-zoo"), "ppo", TARGET,
                                ("mujoco:halfcheetah", "mujoco:halfcheetah+mass=2"))


def config(tmp_path, zoo, z=(5.0, 0.0)) -> StudyConfig:
    """A study whose ranking puts src1 first; ``z``: the zero-shot evidence of src0 and src1 (the teachers' weights)."""
    pd.DataFrame({"rank": [1, 2], "source": ["src1", "src0"], "zero_shot_z": [z[1], z[0]]}).to_csv(
        tmp_path / RANKING, index=False)
    return StudyConfig(target=TARGET, zoo=zoo, methods=["kickstart"], seeds=1, steps=256, n_envs=1, workers=1,
                       out=tmp_path)


def test_the_weighted_teacher_mean_of_one_weighted_teacher_plays_as_that_teacher(policy_zoo, tmp_path):
    job = plan(config(tmp_path, policy_zoo, z=(5.0, 0.0)))[0]
    teachers, weights = study_teachers(job, "all")
    assert [t.name for t in teachers] == ["src0", "src1"] and weights == [1.0, 0.0]
    table = teacher_table(job.task, teachers, weights, [0.1], episodes=1, seed=3, switch=0).set_index(
        ["policy", "noise"])
    assert list(table.index.get_level_values("policy").unique()) == ["src0", "src1", "weighted teacher mean"]
    for noise in (0.0, 0.1):  # the same actions, the same noise draws
        assert table.loc[("weighted teacher mean", noise), "return"] == table.loc[("src0", noise), "return"]
    assert table.loc[("src0", 0.0), "return"] != table.loc[("src0", 0.1), "return"]
    assert (table["return_after"] == table["return"]).all()  # from step 0 on: the whole episode
    assert (table["return_after_random"] == table["return"]).all()  # random play never acts


def test_recovery_from_random_play_hands_over_at_the_switch(policy_zoo, tmp_path):
    job = plan(config(tmp_path, policy_zoo))[0]
    teachers, _ = study_teachers(job, "all")
    table = teacher_table(job.task, teachers[:1], [1.0], [], episodes=1, seed=3, switch=600).set_index("policy")
    own, after_random = table.loc["src0", "return_after"], table.loc["src0", "return_after_random"]
    assert own != table.loc["src0", "return"] and after_random != own  # the last 400 steps, from other states
    env = make_env(job.task, 1)
    box = env.action_space
    env.close()
    obs = np.zeros((1, *box.shape))
    draws = [random_acting(box, 7)(obs) for _ in range(2)]
    assert (draws[0] == draws[1]).all() and draws[0].shape == (1, *box.shape)  # seeded
    assert (draws[0] >= box.low).all() and (draws[0] <= box.high).all()


def test_a_hand_over_to_the_same_policy_changes_nothing_and_counts_the_rest(policy_zoo, tmp_path):
    job = plan(config(tmp_path, policy_zoo))[0]
    teachers, _ = study_teachers(job, "all")
    env = make_env(job.task, 1)
    box = env.action_space
    env.close()
    act = acting(lambda x: teachers[0].gaussian(x)[0], box)
    other = acting(lambda x: teachers[1].gaussian(x)[0], box)
    with pytest.raises(ValueError, match="needs the generator"):
        acting(lambda x: teachers[0].gaussian(x)[0], box, noise=0.1)
    returns, rests, seen = play(act, job.task, 1, seed=5)
    same, same_rests, _ = play(act, job.task, 1, seed=5, then=act, switch=600)
    assert same == returns and len(seen) == 1000 and rests == returns
    # the first 600 steps alike, the rest collected apart
    handed, handed_rests, _ = play(act, job.task, 1, seed=5, then=other, switch=600)
    assert handed_rests[0] != same_rests[0]
    assert handed[0] - handed_rests[0] == pytest.approx(same[0] - same_rests[0])


@pytest.mark.slow
def test_a_probed_student_follows_its_schedule_and_its_teachers(policy_zoo, tmp_path):
    study = config(tmp_path, policy_zoo)
    decay = pd.DataFrame(probe_student(study, "top", "decay", every=256, episodes=1, seed=0))
    assert list(decay["step"]) == [0, 256, 512] and (decay["variant"] == "top+decay").all()
    # n_steps 512: the weight is read before the first update, then decays to 0 over the run's 256 steps
    assert decay["weight"].iloc[0] == 30.0 and decay["weight"].iloc[-1] == 0.0
    assert (decay["rms_to_target"] > 0).all() and (decay["kl"] > 0).all() and decay["takeover_return"].notna().all()
    constant = pd.DataFrame(probe_student(study, "src0", "constant", every=512, episodes=1, seed=0))
    assert (constant["weight"] == 30.0).all() and (constant["variant"] == "src0+constant").all()
    # the same untrained student at step 0, measured against another teacher
    assert constant["return"].iloc[0] == decay["return"].iloc[0]
    assert constant["rms_to_target"].iloc[0] != decay["rms_to_target"].iloc[0]
    with pytest.raises(ValueError, match="use top, all or a source of the zoo"):
        probe_student(study, "src9", "decay", every=128, episodes=1, seed=0)
    with pytest.raises(ValueError, match="use one of"):
        probe_student(study, "top", "cosine", every=128, episodes=1, seed=0)
