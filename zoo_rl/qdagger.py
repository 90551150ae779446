"""QDagger-style distillation for value-based students (Agarwal et al., NeurIPS 2022, "Reincarnating RL"): DQN and
QR-DQN learn while distilling the zoo's policies, as :mod:`zoo_rl.kickstart` does for PPO and A2C.

The student's loss gains a distillation term towards frozen teachers' action distributions, on the
observations of its own replay minibatches:

    loss = DQN's (or QR-DQN's) TD loss + lambda(t) * mean_i sum_k w_k KL(teacher_k(x_i) || softmax(Q(x_i, .) / tau))

where ``Q`` is the student's Q-values (QR-DQN: the mean of its quantiles), ``tau`` the temperature
(``distill_temperature``, default 1, as QDagger's reference implementation in CleanRL) and ``lambda(t)``
decays linearly from ``kickstart_coef`` (default 1, QDagger's weight of the term) to 0 over
``kickstart_steps`` agent steps (default: all of the first ``learn()`` call's), so the student ends on its
own TD loss. Teachers, their weights (``kickstart:all``: the ranking's), their mapping of actions by meaning
and their absence from saved models are those of Kickstarting (:class:`zoo_rl.kickstart.DistillationMixin`).

Two departures from QDagger, both because the zoo's sources are policies (PPO agents), not DQN agents:
the teacher's distribution is its own policy (its action probabilities) rather than a softmax of its
Q-values, and there is no offline phase on the teacher's replay buffer (a policy source has none; making one
would cost the teacher's play before every run). QDagger's own schedule sets ``lambda`` from the student's
return relative to the teacher's; the linear decay here is Kickstarting's, so that the two compare.

How the term enters SB3's ``train()`` without rewriting it: during ``train()`` the Q-network's forward pass
on the minibatch's observations (the only one with gradients; targets are computed without) registers a
backward hook on its output that adds the term's gradient with respect to that output (computed by autograd on
a detached copy, through :func:`zoo_rl.kickstart.distillation_kl`, Kickstarting's term), so it reaches the
network before SB3 clips the gradient's norm: the update is exactly that of the loss above
(tests/test_qdagger.py checks it against autograd through the whole network).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from sb3_contrib import QRDQN
from stable_baselines3 import DQN
from stable_baselines3.common.distributions import CategoricalDistribution
from torch import nn

from zoo_rl.kickstart import DistillationMixin, distillation_kl


class QDaggerMixin(DistillationMixin):
    """Adds the QDagger term to an SB3 value-based algorithm (DQN, QR-DQN).

    :param distill_temperature: ``tau`` of the student's softmax over its Q-values (> 0).
    Other arguments: :class:`zoo_rl.kickstart.DistillationMixin` (``kickstart_coef`` defaults to 1).
    """

    default_coef = 1.0

    def __init__(self, *args: Any, distill_temperature: float = 1.0, **kwargs: Any) -> None:
        if not distill_temperature > 0 or not math.isfinite(distill_temperature):
            raise ValueError(f"distill_temperature must be a finite number > 0, got {distill_temperature}.")
        self.distill_temperature = float(distill_temperature)
        super().__init__(*args, **kwargs)

    def _q_network(self) -> nn.Module:
        """The online network whose output ``train()`` fits (DQN's ``q_net``, QR-DQN's ``quantile_net``)."""
        return self.q_net

    def _q_values(self, output: torch.Tensor) -> torch.Tensor:
        """The Q-values ``(B, A)`` of the network's output."""
        return output

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        weight = self.kickstart_weight() if self.teachers else 0.0
        self.logger.record("train/kickstart_weight", weight)
        if weight <= 0:
            return super().train(gradient_steps, batch_size)
        network = self._q_network()
        forward = network.forward
        kls: list[float] = []

        def distilling_forward(obs: torch.Tensor) -> torch.Tensor:
            output = forward(obs)
            if not output.requires_grad:  # the target network's pass, or acting
                return output
            with torch.no_grad():
                probs = [t.probs(self._teacher_inputs(obs)) for t in self.teachers]
            # The term's gradient with respect to the network's output, by autograd on a detached copy of it.
            with torch.enable_grad():
                leaf = output.detach().requires_grad_()
                logits = self._q_values(leaf) / self.distill_temperature
                student = CategoricalDistribution(logits.shape[-1]).proba_distribution(logits)
                kl = distillation_kl(student, probs, self.teacher_weights).mean()
                (grad,) = torch.autograd.grad(weight * kl, leaf)
            kls.append(float(kl))
            output.register_hook(lambda g: g + grad)
            return output

        network.forward = distilling_forward
        try:
            super().train(gradient_steps, batch_size)
        finally:  # back to the class's forward
            del network.forward
        self.logger.record("train/kickstart_kl", float(sum(kls) / len(kls)) if kls else math.nan)


class QDaggerDQN(QDaggerMixin, DQN):
    """SB3's DQN with the QDagger term (:class:`QDaggerMixin`)."""


class QDaggerQRDQN(QDaggerMixin, QRDQN):
    """sb3-contrib's QR-DQN with the QDagger term (:class:`QDaggerMixin`): its Q-values are the mean of its
    quantiles."""

    def _q_network(self) -> nn.Module:
        return self.quantile_net

    def _q_values(self, output: torch.Tensor) -> torch.Tensor:
        return output.mean(dim=1)
