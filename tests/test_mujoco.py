"""MuJoCo variants by name: parsing, refusal of bad names and values, and the changes reaching the physics."""

import numpy as np
import pytest

pytest.importorskip("mujoco")

from envs.mujoco import RANGES, make_mujoco, make_mujoco_env, resolve_mujoco  # noqa: E402


def test_names_are_canonical():
    task = resolve_mujoco("mujoco:halfcheetah+mass=1.50+friction=0.5+gravity=1+direction=forward")
    assert task.settings == (("friction", "0.5"), ("mass", "1.5"))  # sorted, defaults dropped
    assert task.game == "mujoco:halfcheetah+friction=0.5+mass=1.5"
    assert task.slug == "mujoco-halfcheetah+friction=0.5+mass=1.5" and task.env_id == "HalfCheetah-v5"
    assert resolve_mujoco(task.slug) == task and resolve_mujoco(task.game).same_task(task)
    assert task.factors == {"mass": 1.5, "friction": 0.5, "gravity": 1.0, "damping": 1.0, "legs": 1.0}
    assert resolve_mujoco("mujoco:halfcheetah+direction=backward").direction == "backward"


@pytest.mark.parametrize("name, message", [
    ("mujoco:cheetah", "bodies are: halfcheetah"),
    ("mujoco:halfcheetah+size=2", "changes are: mass"),
    ("mujoco:halfcheetah+mass=9", r"mass takes factors from 0.25 to 4"),
    ("mujoco:halfcheetah+mass=heavy", "not a number"),
    ("mujoco:halfcheetah+mass=1.2+mass=1.3", "given twice"),
    ("mujoco:halfcheetah+direction=up", "forward, backward"),
    ("mujoco:halfcheetah+mass", "write \\+name=value"),
])
def test_bad_names_are_refused_with_what_is_accepted(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_mujoco(name)


def test_changes_reach_the_model():
    plain = make_mujoco_env(resolve_mujoco("mujoco:halfcheetah")).unwrapped.model
    changed = make_mujoco_env(resolve_mujoco(
        "mujoco:halfcheetah+mass=2+friction=0.5+gravity=0.5+damping=3+legs=1.2")).unwrapped.model
    assert np.allclose(changed.opt.gravity, 0.5 * plain.opt.gravity)
    assert np.allclose(changed.geom_friction[:, 0], 0.5 * plain.geom_friction[:, 0])
    assert np.allclose(changed.dof_damping, 3 * plain.dof_damping)
    limbs = np.arange(plain.nbody) > 1
    assert np.allclose(changed.body_mass[limbs], 2 * 1.2 * plain.body_mass[limbs])
    assert np.allclose(changed.body_mass[1], 2 * plain.body_mass[1])  # the torso keeps its length
    assert np.allclose(changed.body_pos[limbs], 1.2 * plain.body_pos[limbs])
    assert set(RANGES) == {"mass", "friction", "gravity", "damping", "legs"}


def test_backward_rewards_the_opposite_velocity():
    rewards = {}
    for direction in ("forward", "backward"):
        env = make_mujoco_env(resolve_mujoco(f"mujoco:halfcheetah+direction={direction}"))
        env.reset(seed=0)
        action = np.full(env.action_space.shape, 0.5, dtype=np.float32)
        _, _, _, _, info = env.step(action)
        rewards[direction] = (info["reward_forward"], info["x_velocity"])
    assert rewards["forward"][0] == pytest.approx(rewards["forward"][1])
    assert rewards["backward"][0] == pytest.approx(-rewards["backward"][1])


def test_vectorised_and_seeded():
    venv = make_mujoco("mujoco:halfcheetah+gravity=0.8", n_envs=2, seed=3)
    a = venv.reset()
    venv.seed(3)
    b = venv.reset()
    assert a.shape == (2, 17) and np.array_equal(a, b)
    venv.close()


def test_one_entry_point_for_every_family():
    from dataclasses import asdict

    from envs.tasks import env_backend, make_env, resolve, task_from_record

    task = resolve("mujoco:halfcheetah+legs=1.1")
    assert task.family == "mujoco" and task_from_record(asdict(task)) == task
    assert env_backend(task, "auto") == "mujoco"
    with pytest.raises(ValueError, match="no ALE mode"):
        resolve("mujoco:halfcheetah", mode=1)
    venv = make_env(task, 1, seed=0)
    assert venv.observation_space.shape == (17,)
    venv.close()


def test_mujoco_warnings_leave_no_log_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(RuntimeWarning, match="MuJoCo: "):
        import warnings

        warnings.simplefilter("always")
        make_mujoco_env(resolve_mujoco("mujoco:halfcheetah"))
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
