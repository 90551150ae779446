"""One PPO (or A2C) update of several study methods from the same state: how far, and in which direction, does
each move the layers the agent acts with?

    python experiments/one_update.py --target Breakout --mode 4 --zoo agents/zoo-strong \\
        --ranking results/breakout-m4-100k-strong/ranking.csv \\
        --methods finetune:breakout,zoo-lite:ranked+noalign+gate-lr1,zoo-lite:ranked+gate-lr100

Every method is built as its study builds it (:func:`zoo_rl.study.build_model`, the study's hyperparameters and
learning rate); the heads of the first method (the reference) are copied into the others, one rollout of the
reference's policy is collected and each method trains once on it with the same minibatch order. Per method
and NatureCNN layer it prints (and writes with ``--out``): how far the layer starts from the reference's
(relative norm), the norm of its update, that norm over the reference's, and the cosine between the two
updates. Layers are compared as the agent acts with them: a lite or uniform zoo layer merged
(:meth:`zoo_rl.ZooExtractor.merged_state`), so methods whose layers do not merge (``zoo``, ``ensemble``) are
refused, and image targets only (whole-policy targets have no shared extractor to compare).

It answers a question the final returns cannot: whether two methods differ in what an update does or only in
where their seeds took them (a ranked start whose gates do not move and that has no alignment steps as the
fine-tune of its top source: cosine near 1, ratio near 1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.utils import configure_logger

from envs.tasks import make_env
from zoo_rl.extractor import ZooExtractor
from zoo_rl.files import RANKING, atomic_write_bytes, write_csv_atomic
from zoo_rl.study import StudyConfig, build_model, plan
from zoo_rl.study.config import whole_policy
from zoo_rl.study.runs import run_hyperparams, run_spec

#: NatureCNN's layers, as SB3 names them in its state dict.
LAYERS = ("cnn.0", "cnn.2", "cnn.4", "linear.0")
COLUMNS = ["method", "layer", "start_difference", "update_norm", "update_ratio", "cosine"]


def acting_weights(model) -> dict[str, torch.Tensor]:
    """The weights of the layers ``model`` acts with: a zoo extractor's merged layers, or NatureCNN's own."""
    extractor = model.policy.features_extractor
    if isinstance(extractor, ZooExtractor):
        state = extractor.merged_state()
    else:
        state = {k: v.detach() for k, v in extractor.state_dict().items()}
    missing = [layer for layer in LAYERS if f"{layer}.weight" not in state]
    if missing:
        raise ValueError(f"{type(extractor).__name__} has no NatureCNN layers {missing}: compare methods whose "
                         "extractor is a NatureCNN or merges into one (scratch, finetune, zoo-lite, uniform).")
    return {layer: state[f"{layer}.weight"].float().clone() for layer in LAYERS}


def one_update(config: StudyConfig, seed: int = 0) -> pd.DataFrame:
    """The table of the module docstring for ``config.methods`` (the first is the reference), from one rollout of
    ``seed``'s environments."""
    jobs = plan(config)
    if whole_policy(jobs[0].task):
        raise ValueError(f"{config.target} is a whole-policy target: one_update compares NatureCNN extractors of "
                         "image targets (Atari, Lab2D).")
    unmerged = [j.method for j in jobs if j.method.partition(":")[0] in ("zoo", "ensemble")]
    if unmerged:
        raise ValueError(f"{unmerged} do not act with one merged network: compare scratch, finetune, zoo-lite or "
                         "uniform methods.")
    n_envs = run_hyperparams(jobs[0])[1]  # the study's environments per run
    env = make_env(jobs[0].task, n_envs, seed=seed)
    rollout_env = None
    try:
        models = []
        for job in jobs:
            spec = run_spec(job)
            model = build_model(job, env, spec)
            if spec.prepare is not None:
                spec.prepare(model)
            models.append(model)
        reference = models[0]
        for model in models[1:]:
            model.policy.action_net.load_state_dict(reference.policy.action_net.state_dict())
            model.policy.value_net.load_state_dict(reference.policy.value_net.state_dict())
        # The reference last, on environments of its own and right after seeding: its rollout depends on the seed
        # alone, not on how many models were built or reset before it.
        rollout_env = make_env(jobs[0].task, n_envs, seed=seed)
        reference.set_env(rollout_env)
        for model in models[1:] + [reference]:
            if model is reference:
                reference.set_random_seed(seed)
            model.set_logger(configure_logger(0))  # before _setup_learn, which would open a TensorBoard log
            _, callback = model._setup_learn(model.n_steps * model.n_envs, callback=None)
        # `callback` is the reference's: it was set up last
        reference.collect_rollouts(reference.env, callback, reference.rollout_buffer, n_rollout_steps=reference.n_steps)
        starts, updates = [], []
        for model in models:
            model.rollout_buffer = reference.rollout_buffer  # the same data for every method
            before = acting_weights(model)
            np.random.seed(seed)  # the same minibatch order
            torch.manual_seed(seed)
            model.train()
            after = acting_weights(model)
            starts.append(before)
            updates.append({layer: after[layer] - before[layer] for layer in LAYERS})
    finally:
        env.close()
        if rollout_env is not None:
            rollout_env.close()
    rows = []
    for job, start, update in zip(jobs, starts, updates):
        for layer in LAYERS:
            ref_start, ref_update = starts[0][layer], updates[0][layer]
            norm, ref_norm = float(update[layer].norm()), float(ref_update.norm())
            rows.append(dict(method=job.method, layer=layer,
                             start_difference=float((start[layer] - ref_start).norm() / ref_start.norm()),
                             update_norm=norm, update_ratio=norm / ref_norm if ref_norm > 0 else float("nan"),
                             cosine=float(torch.nn.functional.cosine_similarity(
                                 update[layer].flatten(), ref_update.flatten(), dim=0))))
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| method | layer | start vs reference (relative) | update norm | vs reference's | cosine |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        lines.append(f"| {r.method} | {r.layer} | {r.start_difference:.4f} | {r.update_norm:.4f} | "
                     f"{r.update_ratio:.2f} | {r.cosine:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--mode", type=int, default=None)
    parser.add_argument("--zoo", nargs="+", default=None)
    parser.add_argument("--methods", required=True, help="comma-separated; the first is the reference")
    parser.add_argument("--ranking", type=Path, default=None,
                        help="a study's ranking.csv, for ranked starts (default: rank the zoo first, about a minute)")
    parser.add_argument("--lr", type=float, default=None, help="default: the studies' (Adam at 1e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write one_update.csv and one_update.md here")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if len(methods) < 2:
        sys.exit("error: --methods needs a reference and at least one method to compare with it.")
    with tempfile.TemporaryDirectory() as folder:
        if args.ranking is not None:
            if not args.ranking.is_file():
                sys.exit(f"error: {args.ranking} does not exist: give a study's ranking.csv, or leave --ranking out.")
            shutil.copy(args.ranking, Path(folder) / RANKING)
        config = StudyConfig(target=args.target, mode=args.mode, zoo=args.zoo, methods=methods, seeds=1,
                             lr=args.lr, workers=1, out=folder)
        try:
            table = one_update(config, args.seed)
        except (ValueError, FileNotFoundError) as exc:
            sys.exit(f"error: {exc}")
    text = markdown(table)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(table, args.out / "one_update.csv")
        atomic_write_bytes(args.out / "one_update.md", (
            f"One update from the same state, reference {methods[0]} (`python experiments/one_update.py "
            f"{' '.join(sys.argv[1:])}`):\n\n{text}\n").encode())


if __name__ == "__main__":
    main()
