#!/usr/bin/env bash
# Fine-tune the WikiText-2-pretrained BERT-mini (recipes/pretrain_wikitext2_mini.sh) on SST-2.
#
#   bash recipes/finetune_sst2.sh                  # after the pretraining recipe
#
# Length-bucketed batches of 32, AdamW 1e-4 with 10% warmup, dropout 0.1, 3 epochs over the
# 67,349 training sentences, scored on the 872 dev sentences.
#
# Result, measured with this command on 2 CPU cores: RESULT_PLACEHOLDER
set -euo pipefail
DATA=${DATA:-../shared/data}
INIT=${INIT:-runs/pretrain_wikitext2_mini}
OUT=${OUT:-runs/finetune_sst2_mini}

kbert finetune --task sst2 --train "$DATA/glue/SST-2/train.tsv" \
    --validation "$DATA/glue/SST-2/dev.tsv" --init "$INIT" \
    --epochs 3 --batch-size 32 --learning-rate 1e-4 --dropout 0.1 --output "$OUT" --quiet
kbert evaluate --model "$OUT" --data "$DATA/glue/SST-2/dev.tsv"
