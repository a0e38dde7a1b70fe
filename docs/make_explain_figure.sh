#!/usr/bin/env bash
# Makes docs/explain_digits.png, the README's picture: trains the quickstart ViT on scikit-learn's digits (offline,
# the quickstart's 60 epochs; EPOCHS=5 for a quick look), then runs src.explain (attention rollout) on eight test-split digits saved as PNG files.
# Usage: bash docs/make_explain_figure.sh [work dir, default outputs/explain_figure]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:-outputs/explain_figure}
EPOCHS=${EPOCHS:-60}
mkdir -p "$WORK/digits"
$PY -m src.train experiment=quickstart trainer.max_epochs="$EPOCHS" paths.log_dir="$WORK" '~callbacks.rich_progress_bar'
CKPT=$(ls -t "$WORK"/quickstart/runs/*/checkpoints/last.ckpt | head -1)
# eight digits of the test split (seed 42), as 8x8 PNG files such as a user would pass
$PY - "$CKPT" "$WORK/digits" <<'PY'
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from PIL import Image

data = torch.load(sys.argv[1], weights_only=True)["hyper_parameters"]["data"]
datamodule = instantiate(data)
datamodule.setup("test")
test = datamodule.data_test
for i in range(8):
    pixels, label = test.dataset[test.indices[i]]
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(Path(sys.argv[2]) / f"{i}_label{int(label)}.png")
PY
$PY -m src.explain ckpt_path="$CKPT" inputs="$WORK/digits" method=rollout topk=2 paths.log_dir="$WORK"
cp "$(ls -td "$WORK"/explain/runs/* | head -1)/grid.png" docs/explain_digits.png
echo "wrote docs/explain_digits.png"
