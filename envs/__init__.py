"""Environment construction for zoo-rl: Atari on the RL Baselines3 Zoo protocol, and DeepMind Lab2D levels."""

from envs.atari import AtariTask, make_atari, resolve_task
from envs.lab2d import Lab2DEnv, make_lab2d

__all__ = ["AtariTask", "Lab2DEnv", "make_atari", "make_lab2d", "resolve_task"]
