"""zoo-rl: Zoo-Tuning (Shu et al., ICML 2021) for stable-baselines3.

Public API: :class:`ZooExtractor` (plug into any SB3 algorithm through ``policy_kwargs``),
:func:`export_lite` (a lite model as one plain NatureCNN), :func:`load_zoo` /
:func:`load_source` (read SB3 zips, compact zoo folders, CleanRL checkpoints, hub ids),
:class:`GateLogger` (gates to the SB3 logger), :func:`rank_sources` (which source will transfer, before
training), :class:`ZooAdam` (learning rates per parameter group, e.g. faster gates), :class:`KickstartPPO` /
:class:`KickstartA2C` with :func:`load_teacher` (distil zoo policies into a student; :class:`QDaggerDQN` /
:class:`QDaggerQRDQN` for value-based students), the layers themselves, and
:func:`zoo_policy` (every layer of any SB3 policy built from a zoo of whole policies of its kind:
``docs/any-model.md``).

These modules never import the experiment machinery: resumable training runs (:mod:`zoo_rl.training`), the
source trainer (:mod:`zoo_rl.zoo_training`) and the study runner (:mod:`zoo_rl.study`) build on them.
"""

from zoo_rl.aggregate import zoo_conv2d, zoo_linear
from zoo_rl.callbacks import GateLogger
from zoo_rl.export import export_lite
from zoo_rl.extractor import ZooExtractor
from zoo_rl.kickstart import KickstartA2C, KickstartPPO, load_teacher, ranking_weights
from zoo_rl.qdagger import QDaggerDQN, QDaggerQRDQN
from zoo_rl.policies import FastCnnPolicy
from zoo_rl.multipolar import MultipolarActorCriticPolicy, multipolar_policy
from zoo_rl.layers import GATE_MODES, NORMALISATIONS, SourceGate, ZooLayer, ranked_gates
from zoo_rl.optim import ZooAdam, zoo_optimizer
from zoo_rl.ranking import rank_sources
from zoo_rl.policy_sources import PolicySource, load_policy_source, load_policy_zoo
from zoo_rl.sources import Source, SourceUnavailable, load_source, load_zoo
from zoo_rl.zoo_policies import (
    ZooActorCriticPolicy,
    ZooDQNPolicy,
    ZooMaskableActorCriticPolicy,
    ZooQRDQNPolicy,
    ZooSACPolicy,
    ZooTD3Policy,
    ZooTQCPolicy,
    export_zoo_policy,
    zoo_layers,
    zoo_policy,
)

__all__ = [
    "FastCnnPolicy",
    "GATE_MODES",
    "GateLogger",
    "KickstartA2C",
    "KickstartPPO",
    "QDaggerDQN",
    "QDaggerQRDQN",
    "MultipolarActorCriticPolicy",
    "NORMALISATIONS",
    "PolicySource",
    "Source",
    "SourceGate",
    "SourceUnavailable",
    "ZooActorCriticPolicy",
    "ZooExtractor",
    "ZooAdam",
    "ZooDQNPolicy",
    "ZooLayer",
    "ZooMaskableActorCriticPolicy",
    "ZooQRDQNPolicy",
    "ZooSACPolicy",
    "ZooTD3Policy",
    "ZooTQCPolicy",
    "export_lite",
    "export_zoo_policy",
    "load_policy_source",
    "load_policy_zoo",
    "load_source",
    "load_teacher",
    "load_zoo",
    "multipolar_policy",
    "rank_sources",
    "ranked_gates",
    "ranking_weights",
    "zoo_conv2d",
    "zoo_layers",
    "zoo_linear",
    "zoo_optimizer",
    "zoo_policy",
]
