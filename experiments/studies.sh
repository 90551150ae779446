#!/usr/bin/env bash
# The studies behind results/, in the order they are run: the Pong study (with
# the paper's sigmoid gates: with the Lab2D study, the evidence that made sigmoid the default
# normalisation of the later studies), the Lab2D study, the parity run, leave-one-out, Pong at 500k and its
# learning-rate check, the alignment ablation on RoadRunner and the other Pong ablations (alignment, gate
# learning rate). Every command resumes: rerun this script
# after an interruption and finished runs are skipped. Each study is published into results/<name>/
# (tables, plots, tables.md) as soon as it finishes.
#
#   bash experiments/studies.sh            # everything, in order (about 19 CPU-hours on 2 cores)
#   bash experiments/studies.sh pong       # one stage: pong | lab2d | parity | loo | cross | pong-long |
#                                          pong-long-lr | loo-ablation | pong-ablation | pong-long-align |
#                                          choose-gates | choose | choose-align | choose-loo |
#                                          pong-long-choose | ranking | uniform
#
# The pong-100k and lab2d studies pin softmax gates, with which they were published, so that their "zoo"
# and "zoo-lite" keep one meaning whatever the library default is.
#
# Runs go two at a time, one torch thread each (WORKERS=1 for one run at a time on all cores): on this
# 2-core machine two single-thread runs together train 1.5x (plain NatureCNN) and 1.3x (zoo-lite) the
# steps per second of one two-thread run. Each run's own cost column is then its share of the machine;
# benchmarks/bench_throughput.py gives the costs to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
. experiments/stage_helpers.sh  # same_ranking, published

run() {  # run <results name> <transfer.py arguments...>
    # These studies were published with the 1M-step zoo: they name it (--zoo agents/zoo) unless they name theirs.
    local name="$1"; shift
    published "$name" && return
    if [[ " $* " != *" --zoo "* ]]; then set -- --zoo agents/zoo "$@"; fi
    python experiments/transfer.py --out "runs/transfer/$name" --workers "${WORKERS:-2}" "$@"
    reevaluate "runs/transfer/$name" "$@"
    python experiments/publish.py "runs/transfer/$name" --out "results/$name" > /dev/null
}

reevaluate() {  # reevaluate <study folder> <transfer.py arguments...>: Atari final returns from 20 new games
    # Evaluations before envs.atari.restart_games continued the previous evaluation's unfinished games;
    # the final model of every run plays 20 new games instead (experiments/reevaluate.py; Lab2D is unaffected).
    local out="$1"; shift
    if [[ " $* " != *" --target lab2d:"* ]]; then
        python experiments/reevaluate.py "$out" --episodes 20 > /dev/null
    fi
}

if [[ $stage == all || $stage == pong ]]; then
    # 1. Pong (default flavour) from the Atari zoo (pong-m1 is the one related source): every method,
    #    3 seeds, 100k steps, on the gym wrappers (--env-backend gym), as its published runs were trained.
    # 1a. The paper's sigmoid gates (zoo-lite:sigmoid) belong here: evidence for the default normalisation
    #     of the later studies (softmax collapsed the features on Lab2D: README Results).
    run pong-100k --target Pong --env-backend gym --gate-normalisation softmax \
        --methods scratch,finetune,uniform,zoo,zoo-lite,ensemble,zoo-lite:sigmoid
fi
if [[ $stage == all || $stage == lab2d ]]; then
    # 3. A Lab2D target from a zoo mixing Lab2D and Atari sources: every Lab2D fine-tune, one
    #    cross-family fine-tune (breakout), and the K-source methods over all 8 sources; zoo-lite:gate-lr30
    #    asks whether gates that learn 30x faster pick the Lab2D sources (the published runs, named
    #    zoo-lite:gate-x30, multiplied the gate scores by 30 instead, which the per-group learning rate replaced) (at 1e-4 they stay near 1/8), and
    #    zoo-lite:sigmoid whether the paper's unnormalised gates help: the average of 8 unrelated networks
    #    has features about 70x smaller than the sources' (softmax gates; experiments/feature_scale.py),
    #    the paper's sum does not.
    run lab2d-commons_harvest-100k --target lab2d:commons_harvest --zoo agents/zoo-lab2d agents/zoo --gate-normalisation softmax \
        --methods scratch,finetune:lab2d-commons_harvest-probabilistic_apples,finetune:lab2d-clean_up-no_depletion,finetune:lab2d-chase_eat,finetune:breakout,uniform,zoo-lite,ensemble,zoo-lite:gate-lr30,zoo-lite:sigmoid
fi
if [[ $stage == all || $stage == parity ]]; then
    # 4. Learning parity of the fast pipeline, on Pong: the game where it uses both bf16 and
    #    ale-py's vector env.
    python benchmarks/parity.py --game Pong --steps 500000 --seeds 3 --workers "${WORKERS:-2}"
    reevaluate runs/parity/Pong-fp32 && reevaluate runs/parity/Pong-bf16
    python benchmarks/parity.py --game Pong --report-only
fi
if [[ $stage == all || $stage == loo ]]; then
    # 2. Leave-one-out: a zoo game as the target, its own source removed (the default zoo drops it).
    for target in Breakout RoadRunner; do
        run "$(echo "$target" | tr '[:upper:]' '[:lower:]')-loo-100k" --target "$target" \
            --methods scratch,finetune,uniform,zoo-lite,ensemble
    done
fi
if [[ $stage == all || $stage == cross ]]; then
    # 2b. One table across the 100k Atari targets: results/cross_target.csv.
    python experiments/transfer.py --aggregate runs/transfer/pong-100k runs/transfer/breakout-loo-100k \
        runs/transfer/roadrunner-loo-100k
fi
if [[ $stage == all || $stage == pong-long ]]; then
    # 1c. The informative methods at 500k steps.
    run pong-500k --target Pong --steps 500000 --eval-every 25000 --methods scratch,finetune:pong-m1,zoo-lite
fi
if [[ $stage == all || $stage == pong-long-lr ]]; then
    # 1d. One level down on Pong at 500k: zoo-lite's curves reached positive scores by 350k steps, where the
    #     pong-m1 fine-tune stayed below -10, with gates that hardly moved (0.50-0.56). Under Adam every bank
    #     takes the same step (its gradient is g_k times the merged layer's, and Adam's step ignores the
    #     scale), so K = 5 sigmoid gates at 0.5 move the merged network about 2.5x as far per update as a
    #     fine-tune moves its own. Is zoo-lite's lead its effective learning rate? Scratch and the fine-tune
    #     at 2.5e-4 (also the RL Zoo's PPO Atari rate) answer it.
    run pong-500k-lr2.5e-4 --target Pong --steps 500000 --eval-every 25000 --lr 2.5e-4 \
        --methods scratch,finetune:pong-m1
    # Both studies side by side, differences to zoo-lite at 1e-4 with their intervals, curves in one plot.
    python experiments/compare.py --run results/pong-500k zoo-lite \
        --run results/pong-500k finetune:pong-m1 --run results/pong-500k-lr2.5e-4 finetune:pong-m1 \
        --run results/pong-500k scratch --run results/pong-500k-lr2.5e-4 scratch \
        --out results/pong-500k-lr-compare --plot > /dev/null
fi
if [[ $stage == all || $stage == loo-ablation ]]; then
    # 2c. Alignment one level down where zoo-lite was hurt (RoadRunner, four unrelated sources), with the
    #     default sigmoid gates: none, or the convolutions only (the paper's code; the 3136->512 layer then
    #     merges cheaply: a cheaper zoo-lite), against zoo-lite.
    #     The study's full method list, so that its study.json and tables.md name every method.
    run roadrunner-loo-100k --target RoadRunner \
        --methods scratch,finetune,uniform,zoo-lite,ensemble,zoo-lite:align-conv,zoo-lite:noalign
fi
if [[ $stage == all || $stage == pong-ablation ]]; then
    # 1b. One level down: no alignment, alignment of the convolutions only
    #     (the paper's code; the 3136->512 layer then merges cheaply), and gates that learn 30x faster
    #     (with Adam at 1e-4 the gates of seed 0 stayed within 0.004 of uniform), against zoo-lite.
    #     The study's full method list (finished runs are skipped), so that study.json names every method.
    #     It resumes the study's own runs (runs/transfer/pong-100k): in a checkout without them it retrains
    #     every method of the study (4.2M steps), not only the ablations.
    run pong-100k --target Pong --env-backend gym --gate-normalisation softmax \
        --methods scratch,finetune,uniform,zoo,zoo-lite,ensemble,zoo-lite:sigmoid,zoo-lite:noalign,zoo-lite:align-conv,zoo-lite:gate-lr30
fi
if [[ $stage == all || $stage == pong-long-align ]]; then
    # 1e. Alignment of the convolutions only (the paper's code), at 500k on Pong with the default sigmoid
    #     gates: the one setting where zoo-lite clearly beat the fine-tune (results/pong-500k). The cheaper
    #     mode zoo-lite's speed needs, and no worse on RoadRunner (loo-ablation); here it
    #     lost most of the lead (README "Pong at 500k steps"), so full alignment stays the default.
    #     SEEDS=2 trains two seeds (a later call with SEEDS=3 adds the third).
    run pong-500k-align-conv --target Pong --steps 500000 --eval-every 25000 --seeds "${SEEDS:-3}" \
        --methods zoo-lite:align-conv
    python experiments/compare.py --run results/pong-500k zoo-lite \
        --run results/pong-500k-align-conv zoo-lite:align-conv --run results/pong-500k finetune:pong-m1 \
        --run results/pong-500k scratch --out results/pong-500k-align-compare --plot > /dev/null
fi
if [[ $stage == all || $stage == choose-gates ]]; then
    # 3a. The gates' learning rate (zoo_rl.optim): zoo-lite with the paper's sigmoid gates started equal, the gates at
    #     30, 100 and 300 times the study's Adam 1e-4, one seed on Pong (gym backend, as pong-100k), to choose
    #     the multiplier of the choose stages: the largest at which no layer's gates saturate (300 drives one
    #     layer's to 0/1) and the related source rises above the others in at least one layer.
    WORKERS=1 run pong-choose-100k --target Pong --env-backend gym --seeds 1 \
        --methods zoo-lite:gate-lr100,zoo-lite:gate-lr300,zoo-lite:gate-lr30
fi
if [[ $stage == all || $stage == choose ]]; then
    # 3b. Targets with one related source in the zoo, 3 seeds, 100k steps: the gates learning at 100x (equal
    #     start: do they choose on their own?) and the ranked start (the merged network starts as the
    #     top-ranked source of ranking.csv, gates at 100x). Pong beside the published pong-100k (same backend);
    #     Breakout mode 4 (its related source: breakout, trained on mode 0) with every method it needs.
    run pong-choose-100k --target Pong --env-backend gym --seeds 3 \
        --methods zoo-lite:gate-lr100,zoo-lite:ranked+gate-lr100
    # The ranked start's merged layers move 10-60x as far as the fine-tune's (diagnostics.csv, "moved": its
    #     alignments are O x O matrices stepped at Adam's rate): the fine-tune of its top-ranked source at
    #     10x the learning rate is the matched-step comparison.
    run pong-100k-lr1e-3 --target Pong --env-backend gym --lr 1e-3 --seeds 3 --methods finetune:pong-m1
    python experiments/compare.py --run results/pong-choose-100k zoo-lite:ranked+gate-lr100 \
        --run results/pong-choose-100k zoo-lite:gate-lr100 --run results/pong-100k finetune:pong-m1 \
        --run results/pong-100k-lr1e-3 finetune:pong-m1 --run results/pong-100k zoo-lite:sigmoid \
        --run results/pong-100k scratch --out results/pong-choose-compare --plot > /dev/null
    run breakout-m4-100k --target Breakout --mode 4 \
        --methods scratch,finetune,zoo-lite,zoo-lite:ranked+gate-lr100,zoo-lite:gate-lr100
    run breakout-m4-100k-lr1e-3 --target Breakout --mode 4 --lr 1e-3 --seeds 3 --methods finetune:breakout
    python experiments/compare.py --run results/breakout-m4-100k zoo-lite:ranked+gate-lr100 \
        --run results/breakout-m4-100k zoo-lite:gate-lr100 --run results/breakout-m4-100k finetune:breakout \
        --run results/breakout-m4-100k-lr1e-3 finetune:breakout --run results/breakout-m4-100k zoo-lite \
        --run results/breakout-m4-100k scratch --out results/breakout-m4-compare --plot > /dev/null
fi
if [[ $stage == all || $stage == choose-align ]]; then
    # 3b'. The ranked start with its alignments stepped at a tenth of the rate: its merged network then moves
    #     about as far per update as the fine-tune of its top source at the study's rate, so the difference to
    #     that fine-tune is what the other sources and the alignments add at a matched step.
    run pong-choose-100k --target Pong --env-backend gym --seeds 3 \
        --methods zoo-lite:gate-lr100,zoo-lite:ranked+gate-lr100,zoo-lite:ranked+gate-lr100+align-lr0.1
    python experiments/compare.py --run results/pong-choose-100k zoo-lite:ranked+gate-lr100 \
        --run results/pong-choose-100k zoo-lite:ranked+gate-lr100+align-lr0.1 --run results/pong-100k finetune:pong-m1 \
        --run results/pong-100k-lr1e-3 finetune:pong-m1 --run results/pong-choose-100k zoo-lite:gate-lr100 \
        --run results/pong-100k zoo-lite:sigmoid --run results/pong-100k scratch \
        --out results/pong-choose-compare --plot > /dev/null
fi
if [[ $stage == all || $stage == choose-loo ]]; then
    # 3c. Negative transfer: the leave-one-out targets (no related source), the new methods beside the
    #     published loo studies.
    for target in Breakout RoadRunner; do
        name="$(echo "$target" | tr '[:upper:]' '[:lower:]')"
        run "$name-loo-choose-100k" --target "$target" --methods zoo-lite:ranked+gate-lr100,zoo-lite:gate-lr100
        python experiments/compare.py --run "results/$name-loo-choose-100k" zoo-lite:ranked+gate-lr100 \
            --run "results/$name-loo-choose-100k" zoo-lite:gate-lr100 --run "results/$name-loo-100k" scratch \
            --run "results/$name-loo-100k" zoo-lite --out "results/$name-loo-choose-compare" --plot > /dev/null
    done
fi
if [[ $stage == all || $stage == pong-long-choose ]]; then
    # 3e. The ranked start at 500k steps on Pong, beside the published fine-tunes of pong-m1 at 1e-4 and 2.5e-4
    #     (the ranked start's layers move between a fine-tune's at 1e-4 and at 1e-3: docs/choosing.md), the
    #     paper's zoo-lite and scratch. SEEDS=2 trains two seeds (a later call with SEEDS=3 adds the third).
    run pong-500k-choose --target Pong --steps 500000 --eval-every 25000 --seeds "${SEEDS:-3}" \
        --methods zoo-lite:ranked+gate-lr100
    python experiments/compare.py --run results/pong-500k-choose zoo-lite:ranked+gate-lr100 \
        --run results/pong-500k finetune:pong-m1 --run results/pong-500k-lr2.5e-4 finetune:pong-m1 \
        --run results/pong-500k zoo-lite --run results/pong-500k scratch \
        --out results/pong-500k-choose-compare --plot > /dev/null
fi
if [[ $stage == all || $stage == ranking ]]; then
    # 3d. The ranking against every study's fine-tunes (ranking.csv of each study, then one table).
    python experiments/validate_ranking.py results/pong-100k results/breakout-loo-100k results/roadrunner-loo-100k \
        results/lab2d-commons_harvest-100k results/breakout-m4-100k results/pong-500k --out results/ranking
fi
if [[ $stage == all || $stage == uniform ]]; then
    # 4. The weight average (`uniform`) of the Pong, Lab2D and leave-one-out studies, trained again, 3 seeds
    #    each (1.4 CPU-hours: `publish.py results/<study>-uniform --cost`): the runs in those studies' results
    #    acted, in rollouts and evaluations, with the average they started from (a uniform zoo layer cached its
    #    merged weights by version counters, which FastCnnPolicy's fused Adam does not bump).
    #    Each takes its study's ranking (uniform does not use it) instead of ranking the zoo again.
    for study in pong-100k lab2d-commons_harvest-100k breakout-loo-100k roadrunner-loo-100k; do
        same_ranking "$study-uniform" "$study"
    done
    run pong-100k-uniform --target Pong --env-backend gym --methods uniform
    run lab2d-commons_harvest-100k-uniform --target lab2d:commons_harvest --zoo agents/zoo-lab2d agents/zoo \
        --methods uniform
    for target in Breakout RoadRunner; do
        run "$(echo "$target" | tr '[:upper:]' '[:lower:]')-loo-100k-uniform" --target "$target" --methods uniform
    done
    # Its row across the three Atari targets (the `uniform` row of results/cross_target.csv is the untrained average).
    python experiments/transfer.py --aggregate results/pong-100k-uniform results/breakout-loo-100k-uniform \
        results/roadrunner-loo-100k-uniform --out results/cross_target-uniform.csv
fi
