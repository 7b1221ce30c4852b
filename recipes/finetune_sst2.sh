#!/usr/bin/env bash
# Fine-tune the WikiText-2-pretrained BERT-mini (recipes/pretrain_wikitext2_mini.sh) on SST-2.
#
#   bash recipes/finetune_sst2.sh                  # after the pretraining recipe
#
# Length-bucketed batches of 32, AdamW 5e-5 with 10% warmup, 2 epochs over the 67,349
# training sentences, scored on the 872 dev sentences.
#
# Result, measured with this command on 2 CPU cores (about 28 min there): SST-2 dev accuracy
# 0.755 (0.759 after the first epoch; training accuracy 0.821 after the second). That is
# below the 0.80 this recipe aims at: 2,000 steps on 250k words of Wikipedia text give a
# weak masked LM (held-out accuracy 0.128) whose 8,192-token vocabulary misses much of the
# film-review vocabulary. A learning rate of 1e-4 gave 0.750 after one epoch. The real
# checkpoint of recipes/finetune_sst2_minilm.sh shows the fine-tuning path itself.
set -euo pipefail
DATA=${DATA:-../shared/data}
INIT=${INIT:-runs/pretrain_wikitext2_mini/model}
OUT=${OUT:-runs/finetune_sst2_mini}

kbert finetune --task sst2 --train "$DATA/glue/SST-2/train.tsv" \
    --validation "$DATA/glue/SST-2/dev.tsv" --init "$INIT" \
    --epochs 2 --batch-size 32 --learning-rate 5e-5 --output "$OUT" --quiet
kbert evaluate --model "$OUT" --data "$DATA/glue/SST-2/dev.tsv"
