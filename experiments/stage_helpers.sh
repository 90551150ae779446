# Helpers shared by the stage scripts (experiments/studies.sh, experiments/studies_strong.sh,
# experiments/studies_continuous.sh), which source it.

same_ranking() {  # same_ranking <study name> <published study>: the published study's ranking.csv, not computed again
    [[ -z "${PARK:-}" ]] || return 0  # parking packs finished runs; it ranks nothing
    ! published "$1" 2> /dev/null || return 0  # its stage skips it (no empty study folder to hold it back)
    mkdir -p "runs/transfer/$1"
    [[ -f "runs/transfer/$1/ranking.csv" ]] || cp "results/$2/ranking.csv" "runs/transfer/$1/"
}

published() {  # published <results name>: the study is in results/ and nothing of it is here to take up
    # A stage names every study it needs, published or not; on a fresh clone (no runs/) a published study would
    # otherwise be trained again from its first step. Its runs here (runs/transfer/<name>) or parked ones
    # (results/_inprogress/<name>.tar.gz) mean it is to be finished or published again, so it is not skipped.
    [[ -f "results/$1/study.json" && ! -d "runs/transfer/$1" && ! -e "results/_inprogress/$1.tar.gz" ]] || return 1
    echo "results/$1 is published: skipped (remove it to train the study again)" >&2
}
