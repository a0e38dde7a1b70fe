"""Multi-label digits (`data=digits_multilabel`): canvases of 2 x 2 cells of 8x8 px holding two or three of
scikit-learn's digits of different classes, the others blank; the labels are the set of digits shown (multi-hot
over the 10 classes). The digits are split first (stratified, seeded, as data=digits), and each split's canvases
are made of its own digits only: no test canvas shows a digit seen in training."""

import numpy as np
import torch
from torch.utils.data import TensorDataset

from src.data.base import TransformedSubset
from src.data.digits import DigitsDataModule, digit_images
from src.errors import UserError

CELLS = 2  # cells per side of the canvas: 16 x 16 px


def compose_canvases(
    images: torch.Tensor, labels: np.ndarray, count: int, digits_per_image: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` canvases (count x 3 x 16 x 16 uint8) of digits drawn from `images` (N x 3 x 8 x 8, classes
    `labels`), each with a number of digits from `digits_per_image`, all of different classes, in distinct cells;
    and their multi-hot labels (count x 10 floats). The same seed gives the same canvases."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    side = images.shape[-1]
    canvases = torch.zeros(count, images.shape[1], CELLS * side, CELLS * side, dtype=torch.uint8)
    targets = torch.zeros(count, 10)
    for n in range(count):
        k = int(rng.choice(digits_per_image))
        for cell, c in zip(
            rng.choice(CELLS * CELLS, k, replace=False), rng.choice(classes, k, replace=False), strict=True
        ):
            row, col = divmod(int(cell), CELLS)
            digit = images[rng.choice(by_class[c])]
            canvases[n, :, row * side : (row + 1) * side, col * side : (col + 1) * side] = digit
            targets[n, c] = 1.0
    return canvases, targets


class DigitsMultilabelDataModule(DigitsDataModule):
    task = "multilabel"
    native_size = CELLS * 8
    # no shifted crops: with shifts of up to 2 px (a quarter of a digit) the quickstart's ViT stayed at chance
    # mAP for its first epochs, where without them it learns from the first; more canvases are the augmentation
    crop_padding = 0

    def __init__(
        self,
        train_images: int,
        val_images: int,
        test_images: int,
        digits_per_image: list[int] = (2, 3),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        h = self.hparams
        per_image = tuple(h.digits_per_image)
        if not per_image or not all(isinstance(k, int) and 1 <= k <= CELLS * CELLS for k in per_image):
            raise UserError(
                f"data.digits_per_image={list(per_image)} must list numbers of digits from 1 to {CELLS * CELLS}"
            )
        images, labels, self.class_names = digit_images(h.channels)
        splits = zip(("train", "val", "test"), self.split_digits(labels), strict=True)
        for number, (split, indices) in enumerate(splits):
            canvases, targets = compose_canvases(
                images[indices], labels[indices], h[f"{split}_images"], per_image, seed=h.seed * 3 + number
            )
            subset = TransformedSubset(
                TensorDataset(canvases, targets), range(len(targets)), self.transform(train=split == "train")
            )
            setattr(self, f"data_{split}", subset)

    def train_targets(self) -> torch.Tensor:
        """The training canvases' labels (what module.class_weights=balanced weighs by)."""
        return self.data_train.dataset.tensors[1]
