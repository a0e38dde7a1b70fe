"""Out-of-fold predictions of k-fold cross-validation: each fold run's best checkpoint predicts its own val fold
(oof_predictions.csv in its run dir), and src.compare joins a sweep's folds into one file and one accuracy."""

import csv
import logging
from collections.abc import Sequence
from io import StringIO
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OOF_PREDICTIONS = "oof_predictions.csv"


def val_images(datamodule) -> list:
    """What names each val image in the pool the folds are cut from: its file, else its index in the data set."""
    subset = datamodule.data_val
    files = getattr(subset.dataset, "files", None)
    return [str(files[i]) if files is not None else int(i) for i in subset.indices]


def write_out_of_fold(trainer, model, datamodule, ckpt_path: str | None, run_dir: Path) -> None:
    """The val fold's class probabilities by the checkpoint at `ckpt_path` (None: the model's weights), into
    `run_dir`/oof_predictions.csv. Under DDP each process predicts its share and rank 0 writes them all."""
    batches = trainer.predict(model, dataloaders=datamodule.val_dataloader(), ckpt_path=ckpt_path)
    probabilities = np.concatenate([logits.float().softmax(dim=-1).cpu().numpy() for logits, _ in batches])
    labels = np.concatenate([labels.cpu().numpy() for _, labels in batches])
    images = val_images(datamodule)
    if trainer.world_size > 1:
        labels, probabilities = _gathered(trainer, len(images), labels, probabilities)
        if trainer.global_rank > 0:
            return
    rows = out_of_fold_rows(images, datamodule.hparams.fold, labels, probabilities, datamodule.class_names)
    text = _csv_text(rows)
    from src.upstream_fixes.checkpoint_io import (
        atomic_write,
    )  # here: src.compare loads this module without torch

    atomic_write(run_dir / OOF_PREDICTIONS, lambda file: file.write(text.encode()))


def _gathered(
    trainer, n: int, labels: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All processes' predictions in val order. Each predicted every world_size-th val image from its rank on
    (the unpadded shares of src/data/base.py's val loaders: UnrepeatedDistributedSampler, the GPU loader)."""
    import torch.distributed as dist

    positions = np.arange(trainer.global_rank, n, trainer.world_size)
    if len(positions) != len(labels):
        raise RuntimeError(
            f"rank {trainer.global_rank} predicted {len(labels)} val images, not {len(positions)}"
        )
    shares = [None] * trainer.world_size
    dist.all_gather_object(shares, (positions, labels, probabilities))
    order = np.concatenate([share[0] for share in shares]).argsort()
    return np.concatenate([s[1] for s in shares])[order], np.concatenate([s[2] for s in shares])[order]


def out_of_fold_rows(
    images: Sequence, fold: int, labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> list[dict]:
    """One row per val image: the image, its fold, its label, the predicted class and each class's probability."""
    predicted = probabilities.argmax(axis=1)
    return [
        {
            "image": image,
            "fold": fold,
            "label": int(label),
            "predicted": int(guess),
            **{f"p_{name}": f"{p:.6g}" for name, p in zip(class_names, probs, strict=True)},
        }
        for image, label, guess, probs in zip(images, labels, predicted, probabilities, strict=True)
    ]


def _csv_text(rows: list[dict]) -> str:
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def read_out_of_fold(run_dir: Path) -> list[dict] | None:
    """A fold run's oof_predictions.csv, None where it has none."""
    path = run_dir / OOF_PREDICTIONS
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def out_of_fold_accuracy(rows: list[dict]) -> float:
    return float(np.mean([row["label"] == row["predicted"] for row in rows]))
