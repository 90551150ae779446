"""A vector environment whose environments are split over a few worker processes.

SB3's ``SubprocVecEnv`` runs one process per environment: with 8 Atari environments on a
2-core machine that is 8 processes exchanging one pipe message each per step, and it barely
beats ``DummyVecEnv``. :class:`ShardedVecEnv` runs ``n_workers`` processes (one per core),
each stepping its shard of the environments in a ``DummyVecEnv`` loop, so one step costs one
message per worker and the emulators of different shards run on different cores.

Each worker holds a plain ``DummyVecEnv`` over the very same environment constructors, so the
observations, rewards, dones and infos are those of ``DummyVecEnv`` over all environments
(a test checks it step by step), seeds included: environment ``i`` gets the ``i``-th seed.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper, VecEnvIndices, VecEnvStepReturn


def _worker(remote: Any, parent_remote: Any, env_fns: CloudpickleWrapper) -> None:
    parent_remote.close()
    try:
        import cv2

        cv2.setNumThreads(1)  # the worker is one core's worth of work; no OpenCV thread pool
    except ImportError:
        pass
    venv = DummyVecEnv(env_fns.var)
    try:
        while True:
            cmd, data = remote.recv()
            if cmd == "step":
                remote.send(venv.step(data))
            elif cmd == "reset":
                seeds, options = data
                venv._seeds = list(seeds)
                venv._options = list(options)
                obs = venv.reset()
                remote.send((obs, list(venv.reset_infos)))
            elif cmd == "spaces":
                remote.send((venv.observation_space, venv.action_space, venv.render_mode))
            elif cmd == "get_attr":
                name, indices = data
                remote.send(venv.get_attr(name, indices))
            elif cmd == "set_attr":
                name, value, indices = data
                remote.send(venv.set_attr(name, value, indices))
            elif cmd == "env_method":
                name, args, kwargs, indices = data
                remote.send(venv.env_method(name, *args, indices=indices, **kwargs))
            elif cmd == "env_is_wrapped":
                wrapper, indices = data
                remote.send(venv.env_is_wrapped(wrapper, indices))
            elif cmd == "get_images":
                remote.send(venv.get_images())
            elif cmd == "close":
                venv.close()
                remote.close()
                break
            else:
                raise NotImplementedError(f"ShardedVecEnv worker: unknown command {cmd!r}")
    except KeyboardInterrupt:
        pass
    except EOFError:  # the parent went away
        pass


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


class ShardedVecEnv(VecEnv):
    """``len(env_fns)`` environments stepped by ``n_workers`` processes, a contiguous shard each.

    :param env_fns: environment constructors, as for ``DummyVecEnv``/``SubprocVecEnv``.
    :param n_workers: worker processes (at most one per environment); one per CPU core is the
        intended use.
    :param start_method: multiprocessing start method (default ``forkserver`` where available,
        else ``spawn``: forking a process that already runs torch threads is unsafe).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], n_workers: int = 2,
                 start_method: str | None = None) -> None:
        if not env_fns:
            raise ValueError("ShardedVecEnv needs at least one environment constructor.")
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}.")
        n_workers = min(int(n_workers), len(env_fns))
        self.shards = [list(s) for s in np.array_split(np.arange(len(env_fns)), n_workers)]
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        self.remotes, self.processes = [], []
        self.closed = False
        self.waiting = False
        for shard in self.shards:
            remote, work_remote = ctx.Pipe()
            process = ctx.Process(target=_worker, daemon=True,
                                  args=(work_remote, remote, CloudpickleWrapper([env_fns[i] for i in shard])))
            process.start()
            work_remote.close()
            self.remotes.append(remote)
            self.processes.append(process)
        self.remotes[0].send(("spaces", None))
        observation_space, action_space, render_mode = self.remotes[0].recv()
        super().__init__(len(env_fns), observation_space, action_space)
        self.render_mode = render_mode

    # -- stepping -------------------------------------------------------------------------------
    def step_async(self, actions: np.ndarray) -> None:
        for remote, shard in zip(self.remotes, self.shards):
            remote.send(("step", actions[shard[0]:shard[-1] + 1]))
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        results = [remote.recv() for remote in self.remotes]
        self.waiting = False
        obs, rews, dones, infos = zip(*results)
        return _concat(list(obs)), np.concatenate(rews), np.concatenate(dones), [i for part in infos for i in part]

    def reset(self) -> Any:
        for remote, shard in zip(self.remotes, self.shards):
            remote.send(("reset", ([self._seeds[i] for i in shard], [self._options[i] for i in shard])))
        results = [remote.recv() for remote in self.remotes]
        obs, reset_infos = zip(*results)
        self.reset_infos = [i for part in reset_infos for i in part]
        self._reset_seeds()
        self._reset_options()
        return _concat(list(obs))

    def close(self) -> None:
        if self.closed:
            return
        if self.waiting:
            for remote in self.remotes:
                remote.recv()
        for remote in self.remotes:
            remote.send(("close", None))
        for process in self.processes:
            process.join()
        self.closed = True

    # -- attributes and methods of the environments ----------------------------------------------
    def _by_worker(self, indices: VecEnvIndices) -> list[tuple[int, list[int]]]:
        """``[(worker, local indices)]`` for the global ``indices``, in the order given."""
        out: list[tuple[int, list[int]]] = []
        for index in self._get_indices(indices):
            worker = next(w for w, shard in enumerate(self.shards) if index in shard)
            local = index - self.shards[worker][0]
            if out and out[-1][0] == worker:
                out[-1][1].append(local)
            else:
                out.append((worker, [local]))
        return out

    def _call(self, cmd: str, make_data: Callable[[list[int]], Any], indices: VecEnvIndices) -> list[Any]:
        out: list[Any] = []
        for worker, local in self._by_worker(indices):
            self.remotes[worker].send((cmd, make_data(local)))
            out.extend(self.remotes[worker].recv())
        return out

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call("get_attr", lambda local: (attr_name, local), indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for worker, local in self._by_worker(indices):
            self.remotes[worker].send(("set_attr", (attr_name, value, local)))
            self.remotes[worker].recv()

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return self._call("env_method", lambda local: (method_name, method_args, method_kwargs, local), indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._call("env_is_wrapped", lambda local: (wrapper_class, local), indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        images: list[np.ndarray | None] = []
        for remote in self.remotes:
            remote.send(("get_images", None))
        for remote in self.remotes:
            images.extend(remote.recv())
        return images
