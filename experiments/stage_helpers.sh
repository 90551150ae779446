# Helpers shared by the stage scripts (experiments/studies.sh, experiments/studies_strong.sh), which source it.

same_ranking() {  # same_ranking <study name> <published study>: the published study's ranking.csv, not computed again
    [[ -z "${PARK:-}" ]] || return 0  # parking packs finished runs; it ranks nothing
    mkdir -p "runs/transfer/$1"
    [[ -f "runs/transfer/$1/ranking.csv" ]] || cp "results/$2/ranking.csv" "runs/transfer/$1/"
}
