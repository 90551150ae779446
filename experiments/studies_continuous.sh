#!/usr/bin/env bash
# The continuous-control studies: PPO targets on HalfCheetah bodies from the MuJoCo zoo (agents/zoo-mujoco), and
# one SAC target on a Pendulum variant from the Pendulum zoo (agents/zoo-pendulum). Whole policies transfer
# (zoo_rl.zoo_policy: every Linear of actor and critic from the sources); the methods are the default set of
# a whole-policy study: scratch, a fine-tune of each source, the paper's zoo-lite (sigmoid gates), zoo-lite with
# gates divided by their sum, the ranked start and, for PPO, Kickstarting (kickstart, kickstart:all, the ranked
# start kickstarted) and MULTIPOLAR. 3 seeds, 100k agent
# steps (a tenth of the sources' own training), the hyperparameter file's learning rate; final returns from 20
# new episodes with deterministic actions.
#
#   bash experiments/studies_continuous.sh mujoco-in       # one stage: gate-choice | mujoco-in | mujoco-out | pendulum
#                                                           | criteria
#   PARK=1 bash experiments/studies_continuous.sh mujoco-in  # pack the stage's finished runs into results/_inprogress/
#
# Targets are named before any run, by where their dynamics lie against the zoo's (masses x0.5-x2, friction
# x0.4-x1, legs x1-x1.2; one source runs backwards): two inside the range, one outside it; for SAC, gravity 12
# (inside the sources' 8-14).
#
# Cost (one torch thread a run, two runs at a time on 2 cores; python benchmarks/bench_zoo_policy.py): a plain
# 256x256 PPO run trains at about 370-450 steps/s, a zoo method with six aligned sources at about 60-100 (the
# alignments' O x O products dominate; the gate choice's HalfCheetah zoo-lite runs took 4.8-4.9 minutes for 30k
# steps: python experiments/publish.py results/gate-choice-halfcheetah --cost): a 100k MuJoCo study of its default
# methods, 42 runs (12 of them zoo methods), takes about 5-7 CPU-hours. SAC on Pendulum (64x64): plain about 100
# steps/s, zoo-lite about 26-48: the 10k study about 1.5. The gate choice took 1.7 CPU-hours (24 runs).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
. experiments/stage_helpers.sh  # published

run() {  # run <results name> <transfer.py arguments...>
    local name="$1"; shift
    published "$name" && return
    if [[ -n "${PARK:-}" ]]; then
        python experiments/transfer.py --out "runs/transfer/$name" "$@" --park || true  # nothing to park yet
        return
    fi
    python experiments/transfer.py --out "runs/transfer/$name" --workers "${WORKERS:-2}" "$@"
    python experiments/publish.py "runs/transfer/$name" --out "results/$name" > /dev/null
}

if [[ $stage == all || $stage == gate-choice ]]; then
    # 0. The whole-policy defaults of the gated methods, chosen before the studies below on two targets none of them
    #    uses (inside the zoos' ranges: a Pendulum with a heavier pole, SAC, 10k steps; a heavier HalfCheetah, PPO,
    #    30k steps), 2 seeds each, by experiments/choose.py's rule (mean rank of the AUC over the two targets; ties
    #    to the candidate named first, the current default). First the gate normalisation of the paper's zoo-lite;
    #    then, under the chosen one, the ranked start's gate rate: the 100x multiplier chosen for PPO on Atari, or a
    #    span (zoo_rl.study.methods.gate_span: the distance a gate score may travel over the run, which 100x is
    #    on Atari at 100k steps, about 16) or a tenth of it. Cost: 24 runs, about 3 CPU-hours.
    pendulum=(--target classic:pendulum+m=1.25 --algo sac --steps 10000 --eval-every 1000 --zoo agents/zoo-pendulum
              --seeds 2)
    cheetah=(--target mujoco:halfcheetah+mass=1.5 --steps 30000 --eval-every 3000 --zoo agents/zoo-mujoco --seeds 2)
    norms=zoo-lite:sigmoid,zoo-lite:softmax,zoo-lite:sigmoid-sum
    run gate-choice-pendulum "${pendulum[@]}" --methods "$norms"
    run gate-choice-halfcheetah "${cheetah[@]}" --methods "$norms"
    norm=sigmoid  # what a park names (it packs the runs whatever their methods)
    if [[ -z "${PARK:-}" ]]; then
        norm="$(python experiments/choose.py results/gate-choice-pendulum results/gate-choice-halfcheetah \
            --candidates "$norms" --out results/gate-choice-normalisation --chosen)"
        norm="${norm#zoo-lite:}"
    fi
    rates=zoo-lite:ranked+$norm+gate-lr100,zoo-lite:ranked+$norm+gate-span16,zoo-lite:ranked+$norm+gate-span1.6
    run gate-choice-pendulum-ranked "${pendulum[@]}" --methods "$rates"
    run gate-choice-halfcheetah-ranked "${cheetah[@]}" --methods "$rates"
    [[ -n "${PARK:-}" ]] || python experiments/choose.py results/gate-choice-pendulum-ranked \
        results/gate-choice-halfcheetah-ranked --candidates "$rates" --out results/gate-choice-ranked
fi
if [[ $stage == all || $stage == mujoco-in ]]; then
    run halfcheetah-friction0.8-mass1.25-100k --target mujoco:halfcheetah+friction=0.8+mass=1.25 --zoo agents/zoo-mujoco
    run halfcheetah-legs1.1-mass0.75-100k --target mujoco:halfcheetah+legs=1.1+mass=0.75 --zoo agents/zoo-mujoco
fi
if [[ $stage == all || $stage == mujoco-out ]]; then
    run halfcheetah-mass3.5-100k --target mujoco:halfcheetah+mass=3.5 --zoo agents/zoo-mujoco
fi
if [[ $stage == all || $stage == pendulum ]]; then
    run pendulum-g12-sac-10k --target classic:pendulum+g=12 --algo sac --steps 10000 --eval-every 1000 \
        --zoo agents/zoo-pendulum
fi
if [[ $stage == all || $stage == criteria ]]; then
    # The success criteria, met or not, once the studies are published and experiments/efficiency.py has run on
    # them: every target here has related sources (each in-range body has neighbours in the zoo, the out-of-range
    # one its nearest), so each is judged as a related target, with MULTIPOLAR reported beside the best zoo method.
    [[ -n "${PARK:-}" ]] || python experiments/criteria.py --related results/halfcheetah-friction0.8-mass1.25-100k \
        --related results/halfcheetah-legs1.1-mass0.75-100k --related results/halfcheetah-mass3.5-100k \
        --related results/pendulum-g12-sac-10k --out results/criteria-continuous
fi
