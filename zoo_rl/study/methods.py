"""The study methods and their names: ``scratch``, ``finetune:<source>``, ``uniform``, ``zoo``, ``zoo-lite`` and
``ensemble``, with the zoo methods' options (``zoo-lite:sigmoid+gate-lr100+ranked``).

A name says everything a run of the method needs besides the study: :func:`extractor_kwargs` turns it into
:class:`zoo_rl.ZooExtractor` arguments, :func:`expand_methods` checks a list of names against a zoo.
"""

from __future__ import annotations

import re
from typing import Any

from zoo_rl.layers import DEFAULT_NORMALISATION
from zoo_rl.sources import Source
from zoo_rl.zoo_policies import POLICY_NORMALISATION


#: Method name -> one-line description (``finetune:<source>`` is expanded per source).
METHODS: dict[str, str] = {
    "scratch": "NatureCNN from random initialisation",
    "finetune": "NatureCNN initialised from one source (finetune:<source>, one run per source)",
    "uniform": "average of the source weights, no gates (gate='uniform')",
    "zoo": "Zoo-Tuning with per-sample gates (gate='sample'), the paper's layer",
    "zoo-lite": "lite Zoo-Tuning (gate='lite'), evaluated as the merged single NatureCNN",
    "ensemble": "the K frozen source extractors side by side with a learned head",
    "kickstart": "NatureCNN from random initialisation distilling the top-ranked source's policy (Kickstarting; "
                 "kickstart:all: every source's, weighted by the ranking's zero-shot evidence)",
    "multipolar": "MULTIPOLAR: the frozen sources' actions aggregated with learned per-source, per-dimension weights, "
                  "plus the target's own actor (whole-policy zoos: zoo_rl.multipolar)",
}


#: Kickstarting as a study runs it by default: the method a practitioner would use instead of aggregating weights,
#: from the top-ranked source and from every source, and on top of the ranked start (the two are not exclusive).
KICKSTART_METHODS: list[str] = ["kickstart", "kickstart:all", "zoo-lite:ranked+gate-lr100+kickstart"]
#: The methods a study runs when it names none: every method above, Zoo-Tuning started from the top-ranked
#: source with its gates at 100x the learning rate (docs/choosing.md: above the best single-source fine-tune on
#: the targets with a related source, not below scratch without one), and Kickstarting, so that every table holds
#: the alternative a user would weigh (for DQN and QR-DQN, QDagger's distillation). A SAC study leaves it out.
DEFAULT_METHODS: list[str] = ([m for m in METHODS if m not in ("kickstart", "multipolar")] + ["zoo-lite:ranked+gate-lr100"]
                              + KICKSTART_METHODS)
#: The ranked start of a study that transfers whole policies: gates divided by their sum (as
#: :data:`zoo_rl.zoo_policies.POLICY_NORMALISATION`), at the rate the gate-choice stage chose among 100x the
#: learning rate, a span of 16 and one of 1.6 (``experiments/studies_continuous.sh gate-choice``; docs/studies.md).
POLICY_RANKED = f"zoo-lite:ranked+{POLICY_NORMALISATION}+gate-span1.6"
#: The methods of a study that transfers whole policies (a MuJoCo or classic-control target, :func:`zoo_rl.zoo_policy`)
#: when it names none: scratch, a fine-tune of each source, the paper's zoo-lite (sigmoid gates, equal start), the
#: lite zoo with its gates averaging the sources (the whole-policy normalisation), the ranked start, Kickstarting
#: and MULTIPOLAR, the multi-source baseline of continuous control (an off-policy study leaves out these two).
#: The paper's per-sample ``zoo`` and ``uniform`` are left to ``--methods``: the first costs about twice zoo-lite a
#: step, the second is ``zoo-lite:sigmoid-sum``'s start without its gates.
POLICY_DEFAULT_METHODS: list[str] = ["scratch", "finetune", "zoo-lite", f"zoo-lite:{POLICY_NORMALISATION}", POLICY_RANKED,
                                     "kickstart", "kickstart:all", POLICY_RANKED + "+kickstart", "multipolar"]
#: Methods that need a NatureCNN zoo (image targets), and those that need whole policies of the target's spaces.
EXTRACTOR_ONLY = ("ensemble",)
POLICY_ONLY = ("multipolar",)
ZOO_GATES = {"uniform": "uniform", "zoo": "sample", "zoo-lite": "lite"}


#: Options of the zoo methods, ``<method>:<option>[+<option>]``, e.g. ``zoo-lite:sigmoid`` (the paper's
#: gate normalisation) or ``zoo-lite:noalign`` (no channel alignment). Also, with a number N:
#: ``gate-lr<N>``, ``align-lr<N>``, ``bank-lr<N>``: that group's learning rate is N times the study's
#: (:mod:`zoo_rl.optim`); and ``ranked`` / ``top<k>``: the gates start with 0.99 of the weight on the
#: best-ranked source (shared by the top k), from the study's ``ranking.csv`` (:mod:`zoo_rl.ranking`);
#: ``gate-span<S>``: the gates' learning rate set from the run's budget so that ``rate x optimizer updates = S``
#: (:func:`gate_span`).
ZOO_OPTIONS: dict[str, dict[str, Any]] = {
    "softmax": dict(normalisation="softmax"),
    "sigmoid": dict(normalisation="sigmoid"),
    "sigmoid-sum": dict(normalisation="sigmoid-sum"),
    "noalign": dict(align=False),
    "align-conv": dict(align="conv"),
}


_LR_OPTION = re.compile(r"(gate|align|bank)-lr(\d+(?:\.\d+)?(?:e-?\d+)?)")


_TOP_OPTION = re.compile(r"ranked|top(\d+)")


_SPAN_OPTION = re.compile(r"gate-span(\d+(?:\.\d+)?(?:e-?\d+)?)")


#: Options of the zoo methods that also kickstart them (:mod:`zoo_rl.kickstart`): from the top-ranked source,
#: or from every source weighted by the ranking. As methods of their own: ``kickstart``, ``kickstart:all``.
KICKSTART_OPTIONS = {"kickstart": "top", "kickstart-all": "all"}


#: Kickstarting's schedule, options of every kickstarted method (``kickstart:all+kcoef3+kdecay1``,
#: ``zoo-lite:ranked+kickstart+kcoef0.3``): ``kcoef<X>``, the distillation weight at the start (``lambda(0)``,
#: X > 0), and ``kdecay<F>``, the share of the study's steps over which it decays linearly to 0 (0 < F <= 1).
#: Unnamed, they take these defaults: the schedule chosen by experiment (``experiments/kickstart_grid.py`` over
#: weights 0.3, 1, 3 with decays over half or all of the steps, then 10 and 30 over all of them, on Pong and
#: Breakout mode 4 with their related source as the teacher: best on both).
KICKSTART_DEFAULTS: dict[str, float] = {"kcoef": 30.0, "kdecay": 1.0}
#: The schedule of a kickstarted DQN or QR-DQN (QDagger's distillation, :mod:`zoo_rl.qdagger`) when it names none:
#: QDagger's weight of the term, 1, against a TD loss whose scale is not PPO's.
QDAGGER_DEFAULTS: dict[str, float] = {"kcoef": 1.0, "kdecay": 1.0}
#: Algorithms whose kickstarted methods distil QDagger-style, with :data:`QDAGGER_DEFAULTS`.
QDAGGER_ALGOS = ("dqn", "qrdqn")
_KICKSTART_SCHEDULE = re.compile(r"(kcoef|kdecay)(\d+(?:\.\d+)?(?:e-?\d+)?)")


#: Share of the start gates on the top-ranked source(s) of the ``ranked`` / ``top<k>`` options.
RANKED_WEIGHT = 0.99


def zoo_options(method: str) -> dict[str, Any]:
    """ZooExtractor keyword arguments of a zoo method's options: ``zoo-lite:sigmoid+noalign+gate-lr30`` ->
    ``{"normalisation": "sigmoid", "align": False, "gate_lr": 30.0}``. A ranked start is not among them
    (it needs the study's ranking): see :func:`ranked_top`.

    :raises ValueError: an unknown option (the valid ones are listed).
    """
    _, _, arg = method.partition(":")
    kwargs: dict[str, Any] = {}
    for option in filter(None, arg.split("+")):
        rate = _LR_OPTION.fullmatch(option)
        if rate and float(rate[2]) > 0:
            kwargs[f"{rate[1]}_lr"] = float(rate[2])
            continue
        top = _TOP_OPTION.fullmatch(option)
        if (top and (top[1] is None or int(top[1]) >= 1)) or option in KICKSTART_OPTIONS:
            continue
        if _SPAN_OPTION.fullmatch(option):
            gate_span(method)  # raises on a zero span, or one beside gate-lr<N>
            continue
        if _KICKSTART_SCHEDULE.fullmatch(option):
            kickstart_schedule(method)  # raises unless the method kickstarts and the value is in range
            continue
        if option not in ZOO_OPTIONS:
            hint = " (gate-x<N> became gate-lr<N>: a real learning rate per parameter group)" if option.startswith(
                "gate-x") else ""
            raise ValueError(f"Unknown option {option!r} in method {method!r}{hint}; options of zoo, zoo-lite and "
                             f"uniform (joined with '+'): {', '.join(ZOO_OPTIONS)}, gate-lr<N>, align-lr<N>, "
                             "bank-lr<N> (that group's learning rate x N), gate-span<S> (the gates' rate x the run's optimizer "
                             "updates = S), ranked or top<k> (start from the "
                             "best-ranked source(s)), kickstart or kickstart-all (also distil the top-ranked "
                             "source's policy, or every source's) with kcoef<X>, kdecay<F> (its schedule).")
        kwargs.update(ZOO_OPTIONS[option])
    return kwargs


def gate_span(method: str) -> float | None:
    """The ``gate-span<S>`` of a zoo method, else None. Under Adam a parameter moves by about its learning rate
    per update whatever its gradient, so ``rate x updates`` bounds how far a gate score can travel over a run:
    a span states that distance for every algorithm and budget, where a multiplier's meaning changes with
    them (``gate-lr100`` is a span of about 16 for PPO on Atari at 100k steps, 1,000 for SAC at 10k).
    The study turns it into the gates' multiplier (:func:`zoo_rl.study.runs.optimizer_updates`).

    :raises ValueError: a span of 0, two spans, or a span beside ``gate-lr<N>`` (they set the same rate).
    """
    options = method.partition(":")[2].split("+")
    spans = [float(m[1]) for m in map(_SPAN_OPTION.fullmatch, options) if m]
    if not spans:
        return None
    if len(spans) > 1 or spans[0] <= 0:
        raise ValueError(f"{method}: give one gate-span<S> with S > 0 (how far a gate score may travel over the run).")
    if any((m := _LR_OPTION.fullmatch(o)) and m[1] == "gate" for o in options):
        raise ValueError(f"{method}: gate-span<S> and gate-lr<N> both set the gates' learning rate; keep one.")
    return spans[0]


def ranked_top(method: str) -> int | None:
    """How many best-ranked sources a method starts from (``ranked``: 1, ``top<k>``: k), else None."""
    for option in method.partition(":")[2].split("+"):
        top = _TOP_OPTION.fullmatch(option)
        if top:
            return int(top[1] or 1)
    return None


def kickstart_teachers(method: str) -> str | None:
    """Which teachers a method distils (:mod:`zoo_rl.kickstart`): ``"top"`` (the top-ranked source), ``"all"``
    (every source, weighted by the ranking), or None: ``kickstart`` -> top, ``kickstart:all`` -> all,
    ``zoo-lite:ranked+kickstart`` -> top, ``zoo-lite:kickstart-all`` -> all."""
    base, _, arg = method.partition(":")
    if base == "kickstart":
        return "all" if "all" in arg.split("+") else "top"
    for option in arg.split("+"):
        if option in KICKSTART_OPTIONS:
            return KICKSTART_OPTIONS[option]
    return None


def kickstart_schedule(method: str, algo: str = "ppo") -> dict[str, float] | None:
    """The distillation schedule of a kickstarted method, ``{"kcoef": lambda(0), "kdecay": share of the steps}``
    (:data:`KICKSTART_DEFAULTS` where the method names none, :data:`QDAGGER_DEFAULTS` for a DQN or QR-DQN
    ``algo``); None for a method that does not kickstart.

    :raises ValueError: a schedule option on a method that does not kickstart, or a value out of range.
    """
    options = method.partition(":")[2].split("+")
    named = {m[1]: float(m[2]) for m in map(_KICKSTART_SCHEDULE.fullmatch, options) if m}
    if kickstart_teachers(method) is None:
        if named:
            raise ValueError(f"{method}: kcoef<X> and kdecay<F> set Kickstarting's schedule; add kickstart (or "
                             "kickstart-all) to the method's options, or use the kickstart method.")
        return None
    if named.get("kcoef", KICKSTART_DEFAULTS["kcoef"]) <= 0:
        raise ValueError(f"{method}: kcoef must be > 0 (the distillation weight at the start); without "
                         "distillation the method is scratch or the zoo method alone.")
    if not 0 < named.get("kdecay", KICKSTART_DEFAULTS["kdecay"]) <= 1:
        raise ValueError(f"{method}: kdecay is the share of the study's steps over which the distillation weight "
                         "decays to 0: 0 < kdecay <= 1.")
    return {**(QDAGGER_DEFAULTS if algo in QDAGGER_ALGOS else KICKSTART_DEFAULTS), **named}


def extractor_kwargs(method: str, normalisation: str | None = None) -> dict[str, Any]:
    """ZooExtractor keyword arguments (all but the zoo) of a zoo method: ``gate``, its options and,
    for the gated methods, the normalisation: the method's own option, else ``normalisation``, else
    the library default. Empty for methods without a ZooExtractor."""
    base = method.partition(":")[0]
    if base not in ZOO_GATES:
        return {}
    kwargs = dict(gate=ZOO_GATES[base], **zoo_options(method))
    if base != "uniform":
        kwargs.setdefault("normalisation", normalisation or DEFAULT_NORMALISATION)
    return kwargs


def canonical_method(method: str, normalisation: str | None) -> str:
    """A method's name with its gate normalisation spelt out and its options sorted, so that runs of
    one method from studies with different defaults compare: ``zoo-lite`` trained with sigmoid gates
    and ``zoo-lite:sigmoid`` are both ``zoo-lite:sigmoid``; ``zoo-lite:noalign`` with softmax gates is
    ``zoo-lite:noalign+softmax``. Other methods are unchanged."""
    base, _, arg = method.partition(":")
    if base not in ZOO_GATES or normalisation is None:
        return method
    options = {o for o in arg.split("+") if o and ZOO_OPTIONS.get(o, {}).get("normalisation") is None}
    return f"{base}:{'+'.join(sorted(options | {normalisation}))}"


def expand_methods(methods: list[str], sources: list[Source]) -> list[str]:
    """Validate method names and expand ``finetune`` into one entry per source.

    :raises ValueError: an unknown method, or ``finetune:<name>`` naming no source.
    """
    names = [s.name for s in sources]
    out: list[str] = []
    for method in methods:
        base, _, arg = method.partition(":")
        if base not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose from: "
                             + "; ".join(f"{k} ({v})" for k, v in METHODS.items()))
        if base in ZOO_GATES and arg:
            zoo_options(method)  # raises on an unknown option
            top = ranked_top(method)
            if top is not None and base == "uniform":
                raise ValueError(f"{method}: uniform gates are fixed at 1/K; a ranked start needs zoo or zoo-lite.")
            if top is not None and sources and top > len(sources):
                raise ValueError(f"{method} starts from the top {top} sources, but the zoo has {len(sources)}.")
            out.append(method)
        elif base == "finetune" and arg:
            if arg not in names:
                raise ValueError(f"finetune:{arg} names no source of the zoo; sources are: {', '.join(names)}.")
            out.append(method)
        elif base == "finetune":
            out += [f"finetune:{n}" for n in names]
        elif base == "multipolar" and arg:
            raise ValueError(f"{method}: MULTIPOLAR takes no options; write multipolar.")
        elif base == "kickstart":
            options = [o for o in arg.split("+") if o]
            if any(o != "all" and not _KICKSTART_SCHEDULE.fullmatch(o) for o in options) or options.count("all") > 1:
                raise ValueError(f"{method}: write kickstart (the top-ranked source teaches) or kickstart:all (every "
                                 "source, weighted by the ranking), with options kcoef<X> (the distillation weight "
                                 "at the start) and kdecay<F> (the share of the steps it decays over), e.g. "
                                 "kickstart:all+kcoef3+kdecay1.")
            kickstart_schedule(method)
            out.append(method)
        else:
            out.append(method)
    return list(dict.fromkeys(out))
