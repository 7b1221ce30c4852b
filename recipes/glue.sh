#!/usr/bin/env bash
# Fine-tune and score one model on every GLUE task whose original TSV files are present.
#
#   bash recipes/glue.sh INIT_DIR [GLUE_DIR]       # GLUE_DIR default: ../shared/data/glue
#
# Each task uses its own columns, labels and metric from kbert's GLUE table (SST-2
# accuracy, CoLA Matthews correlation, RTE accuracy, MRPC F1, STS-B Pearson/Spearman, ...).
# Prints one JSON line of dev metrics per task and writes runs/glue/summary.jsonl.
#
# Result: the dev scores of a run are in runs/glue/summary.jsonl (see the README's figures).
set -euo pipefail
INIT=${1:?usage: recipes/glue.sh INIT_DIR [GLUE_DIR]}
GLUE=${2:-../shared/data/glue}
OUT=${OUT:-runs/glue}
EPOCHS=${EPOCHS:-3}
mkdir -p "$OUT"
: > "$OUT/summary.jsonl"

declare -A DIRECTORY=([sst2]=SST-2 [cola]=CoLA [mrpc]=MRPC [rte]=RTE [qnli]=QNLI
                      [stsb]=STS-B [qqp]=QQP [mnli]=MNLI [wnli]=WNLI)
for task in sst2 cola mrpc rte qnli stsb qqp mnli wnli; do
    dir="$GLUE/${DIRECTORY[$task]}"
    [ -f "$dir/train.tsv" ] || { echo "skipping $task: no $dir/train.tsv"; continue; }
    dev="$dir/dev.tsv"; [ "$task" = mnli ] && dev="$dir/dev_matched.tsv"
    kbert finetune --task "$task" --train "$dir/train.tsv" --validation "$dev" --init "$INIT" \
        --epochs "$EPOCHS" --output "$OUT/$task" --quiet
    metrics=$(kbert evaluate --model "$OUT/$task" --data "$dev" | tail -n 1)
    echo "{\"task\": \"$task\", \"metrics\": $metrics}" | tee -a "$OUT/summary.jsonl"
done
