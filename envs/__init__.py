"""Environment construction for zoo-rl (Atari, RL Baselines3 Zoo protocol)."""

from envs.atari import AtariTask, make_atari, resolve_task

__all__ = ["AtariTask", "make_atari", "resolve_task"]
