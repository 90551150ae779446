"""SB3 callbacks that show what Zoo-Tuning does while it trains."""

from __future__ import annotations

import csv
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from zoo_rl.extractor import ZooExtractor
from zoo_rl.zoo_policies import ZooPolicyMixin


class GateLogger(BaseCallback):
    """Log the mean gate of every source in every layer of every ZooExtractor, and of every zoo layer of a
    policy built with :func:`zoo_rl.zoo_policy` (as extractor ``policy``, layer = the layer's path).

    Values go to the SB3 logger (TensorBoard, CSV, stdout) as ``gates/<extractor>/<layer>/<source>``
    after each rollout (off-policy: at most every :data:`OFF_POLICY_LOG_EVERY` steps), and, when
    ``csv_path`` is given, are appended every ``every`` steps to a
    long-format CSV (``timesteps,extractor,layer,source,gate``) for plots.

    :param csv_path: optional CSV file; appended to, so a resumed run keeps its history.
    :param every: steps between CSV rows.
    """

    def __init__(self, csv_path: str | Path | None = None, every: int = 10_000, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.every = every
        self._next_row = 0

    def _extractors(self) -> dict[str, ZooExtractor]:
        found = {}
        for name, module in self.model.policy.named_modules():  # deduplicated: shared extractors once
            if isinstance(module, ZooExtractor) and "target" not in name:
                found[name or "features_extractor"] = module
        return found

    #: Steps between reads of the gates for an off-policy model, whose "rollout" is one environment step: reading
    #: every zoo layer's gates after each step would cost a traversal of the policy per step.
    OFF_POLICY_LOG_EVERY = 1000

    def _on_training_start(self) -> None:
        self._next_row = self.num_timesteps
        self._next_log = self.num_timesteps
        on_policy = isinstance(self.model, OnPolicyAlgorithm)  # one rollout is n_steps x n_envs steps
        self._log_every = 0 if on_policy else min(self.every, self.OFF_POLICY_LOG_EVERY)

    def rows(self) -> list[tuple[int, str, str, str, float]]:
        out = []
        for ext_name, extractor in self._extractors().items():
            for layer, gates in extractor.gate_values().items():
                for source, value in zip(extractor.source_names, gates.tolist()):
                    out.append((self.num_timesteps, ext_name, layer, source, float(value)))
        if isinstance(self.model.policy, ZooPolicyMixin):
            policy = self.model.policy
            for layer, gates in policy.gate_values().items():
                for source, value in zip(policy.source_names, gates.tolist()):
                    out.append((self.num_timesteps, "policy", layer, source, float(value)))
        return out

    def _on_rollout_end(self) -> None:
        if self.num_timesteps < self._next_log:
            return
        self._next_log = self.num_timesteps + self._log_every
        rows = self.rows()
        for _, ext_name, layer, source, value in rows:
            self.logger.record(f"gates/{ext_name}/{layer}/{source}", value)
        if self.csv_path is not None and rows and self.num_timesteps >= self._next_row:
            self._next_row = self.num_timesteps + self.every
            new = not self.csv_path.is_file()
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, "a", newline="") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(["timesteps", "extractor", "layer", "source", "gate"])
                writer.writerows(rows)

    def _on_step(self) -> bool:
        return True
