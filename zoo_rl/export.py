"""``export_lite``: fold a lite Zoo-Tuning model into an ordinary SB3 model of the same architecture."""

from __future__ import annotations

from typing import TypeVar

from stable_baselines3.common.base_class import BaseAlgorithm

from zoo_rl.extractor import ZooExtractor
from zoo_rl.zoo_policies import ZooPolicyMixin, export_zoo_policy

Model = TypeVar("Model", bound=BaseAlgorithm)
_EXTRACTOR_KWARGS = ("features_extractor_class", "features_extractor_kwargs")


def export_lite(model: Model) -> Model:
    """A new model of the same algorithm whose extractor is one plain NatureCNN, or, for a model built
    with :func:`zoo_rl.zoo_policy`, whose whole policy is SB3's plain one (:func:`~zoo_rl.zoo_policies.export_zoo_policy`).

    Each layer becomes ``Σ_k α̂_k A_k W_k`` (and ``Σ_k α̂_k A_k b_k``), where ``α̂`` is the lite
    moving average; the heads are copied. In eval mode the result acts and values like the
    lite model (up to float rounding), at the size and speed of one source network, and it is
    saved and loaded like any SB3 model, with no zoo_rl import needed to use it.

    :param model: an SB3 model whose policy uses :class:`ZooExtractor` with ``gate="lite"`` (or
        ``"uniform"``), or a zoo policy with those gates.
    :raises ValueError: the model has no ZooExtractor and no zoo policy, or its gates depend on the input.
    """
    if isinstance(model.policy, ZooPolicyMixin):
        return export_zoo_policy(model)
    extractors = {name: module for name, module in model.policy.named_modules(remove_duplicate=False)
                  if isinstance(module, ZooExtractor)}
    if not extractors:
        raise ValueError("export_lite needs a model built with features_extractor_class=ZooExtractor or with "
                         "zoo_rl.zoo_policy.")
    for name, extractor in extractors.items():
        if extractor.gate_mode not in ("lite", "uniform"):
            raise ValueError(
                f"{name} uses gate={extractor.gate_mode!r}, whose gates depend on the input and cannot be merged "
                "into one network. Train with gate='lite' to deploy a single network."
            )
    merged = {name: extractor.merged_state() for name, extractor in extractors.items()}
    state = {}
    for key, value in model.policy.state_dict().items():
        owner = next((n for n in merged if key.startswith(n + ".")), None)
        if owner is None:
            state[key] = value
    for name, layers in merged.items():
        for key, value in layers.items():
            state[f"{name}.{key}"] = value

    # Rebuild the way SB3's load() does: same class and attributes, plain policy_kwargs.
    policy_kwargs = {k: v for k, v in model.policy_kwargs.items() if k not in _EXTRACTOR_KWARGS}
    # SB3 picks default hidden layers by extractor class (none for NatureCNN, [64, 64] for a
    # custom one): keep the ones the heads were built with.
    policy_kwargs["net_arch"] = model.policy.net_arch
    plain = type(model)(policy=model.policy_class, env=None, device=model.device, _init_setup_model=False)
    excluded = set(model._excluded_save_params())
    plain.__dict__.update({k: v for k, v in model.__dict__.items() if k not in excluded})
    plain.policy_kwargs = policy_kwargs
    plain._setup_model()
    plain.policy.load_state_dict(state)
    plain.policy.set_training_mode(False)
    if model.get_env() is not None:
        plain.set_env(model.get_env())
    return plain
