#!/usr/bin/env bash
# The studies with the strong Atari zoo (agents/zoo-strong: sources trained until they play well), the protocol
# of experiments/studies.sh (Adam 1e-4, 3 seeds, final returns from 20 new games), in the order they are run:
#
#   bash experiments/studies_strong.sh pong          # one stage: kickstart-grid | kickstart-grid-wide | pong |
#                                                    breakout-m4 | uniform | loo | matched | noalign |
#                                                    more-seeds | pong-long |
#                                                    ranking | criteria
#   PARK=1 bash experiments/studies_strong.sh pong   # pack the stage's finished runs into results/_inprogress/
#
# Every command resumes (finished runs are skipped) and takes up runs parked on another machine; each study is
# published into results/<name>/ when it finishes (its parked archive can then be deleted). Scratch does not
# depend on the zoo: the Breakout mode 4 and leave-one-out studies reuse the published scratch runs of
# experiments/studies.sh (same protocol), side by side through experiments/compare.py; the Pong study is the
# main job exactly as the README runs it (every default method, scratch included, ale-py's vector env).
#
# Cost (one torch thread a run, two runs at a time on 2 cores, AVX-512 with native bf16): a 100k-step run takes
# 5-18 minutes of one core (a fine-tune the least, zoo the most): a 100k study of the default
# methods, 42 runs (Kickstarting's three methods included), about 6 CPU-hours (seed 0 of pong-100k-strong:
# 1.7 CPU-hours for 12 of its 14 methods, the runs' wall_seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
ZOO=agents/zoo-strong
. experiments/stage_helpers.sh  # same_ranking, published

run() {  # run <results name> <transfer.py arguments...>
    local name="$1"; shift
    published "$name" && return
    if [[ -n "${PARK:-}" ]]; then
        python experiments/transfer.py --out "runs/transfer/$name" --zoo "$ZOO" "$@" --park || true  # nothing yet
        return
    fi
    python experiments/transfer.py --out "runs/transfer/$name" --workers "${WORKERS:-2}" --zoo "$ZOO" "$@"
    python experiments/publish.py "runs/transfer/$name" --out "results/$name" > /dev/null
}

compare() {  # compare <out name> <compare.py --run arguments...>
    local name="$1"; shift
    [[ -n "${PARK:-}" ]] || python experiments/compare.py "$@" --out "results/$name" --plot > /dev/null
}

# The default methods without scratch (reused from the published study of the target).
ZOO_METHODS=finetune,uniform,zoo,zoo-lite,ensemble,zoo-lite:ranked+gate-lr100
ZOO_METHODS=$ZOO_METHODS,kickstart,kickstart:all,zoo-lite:ranked+gate-lr100+kickstart

if [[ $stage == all || $stage == kickstart-grid ]]; then
    # 0. Kickstarting's schedule, chosen before its studies: the related source distilled (the only source of
    #    the grid's zoo, and the one the ranking put first on both targets with the 1M zoo) with the weight
    #    starting at 0.3, 1 or 3 and decaying to 0 over half or all of the 100k steps, one seed, on the two
    #    targets with a related source. Rule, fixed before the runs: per target, rank the schedules by the
    #    area under their evaluation curve (results.csv `auc`); the schedule with the best mean rank over both
    #    targets becomes the default (ties: the smaller weight). One seed per schedule: a coarse choice.
    #    Every schedule is named in full, so that the names keep their meaning whatever the defaults.
    grid=kickstart:kcoef0.3+kdecay0.5,kickstart:kcoef1+kdecay0.5,kickstart:kcoef3+kdecay0.5
    grid=$grid,kickstart:kcoef0.3+kdecay1,kickstart:kcoef1+kdecay1,kickstart:kcoef3+kdecay1
    ZOO=$ZOO/pong-m1 run kickstart-grid-pong --target Pong --seeds 1 --methods "$grid"
    ZOO=$ZOO/breakout run kickstart-grid-breakout-m4 --target Breakout --mode 4 --seeds 1 --methods "$grid"
    [[ -n "${PARK:-}" ]] || python experiments/kickstart_grid.py results/kickstart-grid-pong \
        results/kickstart-grid-breakout-m4 --out results/kickstart-grid
fi
if [[ $stage == all || $stage == kickstart-grid-wide ]]; then
    # 0b. The grid's choice was its corner (the largest weight over the longest decay): weights 10 and 30 over the
    #     whole run, in studies of their own, ranked with the grid by the same rule (30 added once 10 won).
    wide=kickstart:kcoef10+kdecay1,kickstart:kcoef30+kdecay1
    ZOO=$ZOO/pong-m1 run kickstart-grid-pong-wide --target Pong --seeds 1 --methods "$wide"
    ZOO=$ZOO/breakout run kickstart-grid-breakout-m4-wide --target Breakout --mode 4 --seeds 1 --methods "$wide"
    [[ -n "${PARK:-}" ]] || python experiments/kickstart_grid.py results/kickstart-grid-pong \
        results/kickstart-grid-breakout-m4 results/kickstart-grid-pong-wide results/kickstart-grid-breakout-m4-wide \
        --out results/kickstart-grid
fi
if [[ $stage == all || $stage == pong ]]; then
    # 1. Pong from the strong zoo: the main job, every default method.
    run pong-100k-strong --target Pong
fi
if [[ $stage == all || $stage == breakout-m4 ]]; then
    # 2. Breakout mode 4 (its related source: breakout, trained on mode 0).
    run breakout-m4-100k-strong --target Breakout --mode 4 --methods "$ZOO_METHODS"
    compare breakout-m4-strong-compare --run results/breakout-m4-100k-strong zoo-lite:ranked+gate-lr100 \
        --run results/breakout-m4-100k-strong zoo-lite:ranked+gate-lr100+kickstart \
        --run results/breakout-m4-100k-strong finetune:breakout --run results/breakout-m4-100k-strong kickstart \
        --run results/breakout-m4-100k-strong zoo-lite --run results/breakout-m4-100k scratch
fi
if [[ $stage == all || $stage == uniform ]]; then
    # 2b. The weight average (`uniform`) of the Pong and Breakout mode 4 studies, trained again: the runs in their
    #     results acted, in rollouts and evaluations, with the average they started from (a uniform zoo layer
    #     cached its merged weights by version counters, which FastCnnPolicy's fused Adam does not bump).
    same_ranking pong-100k-strong-uniform pong-100k-strong
    run pong-100k-strong-uniform --target Pong --methods uniform
    same_ranking breakout-m4-100k-strong-uniform breakout-m4-100k-strong
    run breakout-m4-100k-strong-uniform --target Breakout --mode 4 --methods uniform
fi
if [[ $stage == all || $stage == loo ]]; then
    # 3. Leave-one-out: the target's own source left out of the zoo, no related source left in it.
    for target in Breakout RoadRunner; do
        name="$(echo "$target" | tr '[:upper:]' '[:lower:]')"
        run "$name-loo-100k-strong" --target "$target" --methods "$ZOO_METHODS"
        # every zoo method and Kickstarting against the published scratch runs (the reference, first)
        compare "$name-loo-strong-compare" --run "results/$name-loo-100k" scratch \
            --run "results/$name-loo-100k-strong" zoo-lite:ranked+gate-lr100 \
            --run "results/$name-loo-100k-strong" zoo-lite --run "results/$name-loo-100k-strong" zoo \
            --run "results/$name-loo-100k-strong" uniform --run "results/$name-loo-100k-strong" ensemble \
            --run "results/$name-loo-100k-strong" kickstart --run "results/$name-loo-100k-strong" kickstart:all \
            --run "results/$name-loo-100k-strong" zoo-lite:ranked+gate-lr100+kickstart
    done
fi
if [[ $stage == all || $stage == matched ]]; then
    # 3b. The fine-tune of the related source at a matched step: the ranked start's merged layers move several
    #     times as far per update as that fine-tune's at the study's rate (diagnostics.csv, "moved": its
    #     alignments are O x O matrices stepped at Adam's rate), so its lead over the fine-tune may be the step's.
    #     The fine-tune at 10x the rate brackets it, as with the 1M zoo (results/pong-100k-lr1e-3).
    run pong-100k-strong-lr1e-3 --target Pong --lr 1e-3 --methods finetune:pong-m1
    run breakout-m4-100k-strong-lr1e-3 --target Breakout --mode 4 --lr 1e-3 --methods finetune:breakout
    compare pong-strong-matched-compare --run results/pong-100k-strong zoo-lite:ranked+gate-lr100 \
        --run results/pong-100k-strong zoo-lite:ranked+gate-lr100+kickstart \
        --run results/pong-100k-strong finetune:pong-m1 --run results/pong-100k-strong-lr1e-3 finetune:pong-m1 \
        --run results/pong-100k-strong kickstart --run results/pong-100k-strong scratch
    compare breakout-m4-strong-matched-compare --run results/breakout-m4-100k-strong zoo-lite:ranked+gate-lr100 \
        --run results/breakout-m4-100k-strong zoo-lite:ranked+gate-lr100+kickstart \
        --run results/breakout-m4-100k-strong finetune:breakout \
        --run results/breakout-m4-100k-strong-lr1e-3 finetune:breakout \
        --run results/breakout-m4-100k-strong kickstart --run results/breakout-m4-100k scratch
fi
if [[ $stage == all || $stage == noalign ]]; then
    # 3c. The ranked start without channel alignment on Breakout mode 4, where the ranked start ends below the
    #     fine-tune of its top source although its gates stay on that source and its step matches the fine-tune's
    #     at 1e-3: are the alignments (changing as much as the weights) the cost? And without alignment, with
    #     its gates at the study's rate (gate-lr1: they barely move), it is the fine-tune of the top source plus
    #     the other sources at 0.0025 each: is the gates' motion the cost? Same ranking as the study's, so the
    #     same top source starts it.
    name=breakout-m4-100k-strong-noalign
    same_ranking "$name" breakout-m4-100k-strong
    run "$name" --target Breakout --mode 4 --methods zoo-lite:ranked+noalign+gate-lr100,zoo-lite:ranked+noalign+gate-lr1
    compare breakout-m4-strong-noalign-compare --run results/breakout-m4-100k-strong finetune:breakout \
        --run "results/$name" zoo-lite:ranked+noalign+gate-lr100 --run "results/$name" zoo-lite:ranked+noalign+gate-lr1 \
        --run results/breakout-m4-100k-strong zoo-lite:ranked+gate-lr100 --run results/breakout-m4-100k scratch
fi
if [[ $stage == all || $stage == more-seeds ]]; then
    # 3d. Three more seeds (3-5) of the fine-tune of the related source and the ranked start on Breakout mode 4,
    #     where two methods that update alike ended 19 points apart at three seeds: is the ranked start's -6.7
    #     against the fine-tune more than the spread of seeds? Same ranking; compared pooled with seeds 0-2.
    #     Cost: about 1.1 CPU-hours.
    name=breakout-m4-100k-strong-seeds3-5
    same_ranking "$name" breakout-m4-100k-strong
    run "$name" --target Breakout --mode 4 --first-seed 3 --seeds 3 \
        --methods finetune:breakout,zoo-lite:ranked+gate-lr100
    pool="results/breakout-m4-100k-strong,results/$name"
    compare breakout-m4-strong-seeds0-5-compare --run "$pool" finetune:breakout \
        --run "$pool" zoo-lite:ranked+gate-lr100 --run results/breakout-m4-100k-strong-noalign \
        zoo-lite:ranked+noalign+gate-lr1 --run results/breakout-m4-100k scratch
fi
if [[ $stage == all || $stage == pong-long ]]; then
    # 4. Pong at 500k steps: the best fine-tune, the paper's zoo-lite and the ranked start; scratch from
    #    results/pong-500k (same protocol).
    run pong-500k-strong --target Pong --steps 500000 --eval-every 25000 \
        --methods finetune:pong-m1,zoo-lite,zoo-lite:ranked+gate-lr100
    compare pong-500k-strong-compare --run results/pong-500k-strong zoo-lite:ranked+gate-lr100 \
        --run results/pong-500k-strong zoo-lite --run results/pong-500k-strong finetune:pong-m1 \
        --run results/pong-500k scratch
fi
if [[ $stage == all || $stage == ranking ]]; then
    # 5. The ranking against every strong study's fine-tunes.
    [[ -n "${PARK:-}" ]] || python experiments/validate_ranking.py results/pong-100k-strong \
        results/breakout-m4-100k-strong results/breakout-loo-100k-strong results/roadrunner-loo-100k-strong \
        results/pong-500k-strong --out results/ranking-strong
fi
if [[ $stage == all || $stage == criteria ]]; then
    # 6. The success criteria, met or not (after experiments/efficiency.py has run on the 100k studies): scratch
    #    of Breakout mode 4 and the leave-one-out targets from the published studies of the same protocol.
    [[ -n "${PARK:-}" ]] || python experiments/criteria.py --related results/pong-100k-strong \
        --related results/breakout-m4-100k-strong results/breakout-m4-100k \
        --loo results/breakout-loo-100k-strong results/breakout-loo-100k \
        --loo results/roadrunner-loo-100k-strong results/roadrunner-loo-100k \
        --ranking results/ranking-strong --out results/criteria-strong
fi
