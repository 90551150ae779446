"""Learning rates per parameter group, as multipliers of an SB3 algorithm's learning rate.

A module tags its parameters with :func:`set_lr_multiplier` (``ZooLayer`` tags its gate network,
its alignments and its bank); an optimizer from this module (:class:`ZooAdam`, :class:`ZooAdamW`,
:class:`ZooRMSprop`, :class:`ZooSGD`, or :func:`zoo_optimizer` of another torch optimizer) puts
parameters with the same multiplier into one parameter group and steps each group at
``multiplier x`` the group's learning rate::

    model = PPO("CnnPolicy", env, learning_rate=1e-4, policy_kwargs=dict(
        features_extractor_class=ZooExtractor,
        features_extractor_kwargs=dict(zoo=zoo, gate_lr=30.0),
        optimizer_class=ZooAdam, net_arch=[]))

Why the multiplier is applied inside ``step`` and not written into each group's ``lr``: SB3 sets
*every* group's ``lr`` to the schedule's value before each update
(``BaseAlgorithm._update_learning_rate``), which would erase per-group rates. Here ``lr`` stays
the algorithm's rate (so schedules, logging and SB3's resets work unchanged), and each group's
``lr_multiplier`` is a key of the optimizer's state dict, so it is saved and restored with the
model.

Parameters without a tag step at multiplier 1; a model whose tagged multipliers are all 1
steps exactly as with the plain optimizer.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

#: Attribute that carries a parameter's learning-rate multiplier.
LR_MULTIPLIER = "lr_multiplier"
#: Attribute an optimizer of this module sets on every parameter it steps with its multiplier.
_HONOURED = "_lr_multiplier_honoured"


def set_lr_multiplier(params: Iterable[torch.nn.Parameter], multiplier: float) -> None:
    """Tag ``params`` to step at ``multiplier`` times the optimizer's learning rate.

    :raises ValueError: a multiplier that is not a positive finite number.
    """
    multiplier = float(multiplier)
    if not (multiplier > 0 and multiplier != float("inf")):
        raise ValueError(f"A learning-rate multiplier must be a positive number, got {multiplier}.")
    for p in params:
        setattr(p, LR_MULTIPLIER, multiplier)


def lr_multiplier(param: torch.Tensor) -> float:
    """The multiplier ``param`` was tagged with (1 when untagged)."""
    return float(getattr(param, LR_MULTIPLIER, 1.0))


def honoured(param: torch.Tensor) -> bool:
    """True once an optimizer of this module has put ``param`` in a group of its multiplier."""
    return bool(getattr(param, _HONOURED, False))


def multiplier_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    """``params`` (tensors, or parameter-group dicts) as groups of one multiplier each, in first-seen order.

    A group dict given by the caller keeps its own options; its parameters are split by multiplier.
    """
    groups: list[dict[str, Any]] = []
    items = list(params)
    given = items if items and isinstance(items[0], dict) else [{"params": items}]
    for group in given:
        options = {k: v for k, v in group.items() if k != "params"}
        by_multiplier: dict[float, list[torch.Tensor]] = {}
        for p in group["params"]:
            by_multiplier.setdefault(lr_multiplier(p), []).append(p)
        groups += [{**options, "params": ps, LR_MULTIPLIER: m} for m, ps in by_multiplier.items()]
    return groups


class LRMultipliers:
    """Mixin for a ``torch.optim.Optimizer``: one parameter group per multiplier, each stepped at
    ``lr x lr_multiplier``. Put it first in the bases: ``class ZooAdam(LRMultipliers, torch.optim.Adam)``."""

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        groups = multiplier_groups(params)
        super().__init__(groups, *args, **kwargs)  # type: ignore[call-arg]
        for group in self.param_groups:  # type: ignore[attr-defined]
            for p in group["params"]:
                setattr(p, _HONOURED, True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault(LR_MULTIPLIER, 1.0)
        super().add_param_group(param_group)  # type: ignore[misc]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        groups = self.param_groups  # type: ignore[attr-defined]
        base = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = g["lr"] * g.get(LR_MULTIPLIER, 1.0)
        try:
            if closure is not None:
                with torch.enable_grad():
                    return super().step(closure)  # type: ignore[misc]
            return super().step()  # type: ignore[misc]
        finally:
            for g, lr in zip(groups, base):
                g["lr"] = lr


class ZooAdam(LRMultipliers, torch.optim.Adam):
    """``torch.optim.Adam`` with per-group learning-rate multipliers (see the module docstring)."""


class ZooAdamW(LRMultipliers, torch.optim.AdamW):
    """``torch.optim.AdamW`` with per-group learning-rate multipliers."""


class ZooRMSprop(LRMultipliers, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` (A2C's default in SB3) with per-group learning-rate multipliers."""


class ZooSGD(LRMultipliers, torch.optim.SGD):
    """``torch.optim.SGD`` with per-group learning-rate multipliers."""


_ZOO_OPTIMIZERS: dict[type, type] = {
    torch.optim.Adam: ZooAdam, torch.optim.AdamW: ZooAdamW, torch.optim.RMSprop: ZooRMSprop, torch.optim.SGD: ZooSGD,
}


def zoo_optimizer(optimizer_class: type) -> type:
    """The variant of ``optimizer_class`` that honours learning-rate multipliers.

    The four common optimizers map to module-level classes (which SB3 can pickle by name into a
    saved model); another optimizer gets a subclass made here, which saves with cloudpickle.
    """
    if issubclass(optimizer_class, LRMultipliers):
        return optimizer_class
    if optimizer_class not in _ZOO_OPTIMIZERS:
        _ZOO_OPTIMIZERS[optimizer_class] = type(f"Zoo{optimizer_class.__name__}", (LRMultipliers, optimizer_class),
                                                {"__doc__": f"{optimizer_class.__name__} with lr multipliers."})
    return _ZOO_OPTIMIZERS[optimizer_class]
