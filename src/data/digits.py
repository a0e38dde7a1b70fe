"""scikit-learn's bundled handwritten digits (1 797 images of 8x8 px, 10 classes): real images that need
no download, so the quickstart and the tests train for real offline."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from src.data.base import ImageDataModule, TransformedSubset, stratified_split


def digit_images(channels: int = 3) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """All the digits as (N x channels x 8 x 8 uint8 images, their labels, the class names)."""
    digits = load_digits()
    # 0..16 grey levels -> uint8 in `channels` channels (3: RGB), so the same transforms as for photos apply
    images = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8)
    images = images.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
    return images, digits.target, [str(name) for name in digits.target_names]


class DigitsDataModule(ImageDataModule):
    style = "digits"
    native_size = 8
    channel_counts = None  # grey, repeated in as many channels as the model takes

    def __init__(self, val_size: int, test_size: int, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    def split_digits(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices (train, val, test) into the digits: stratified and seeded, val/train by data.folds if set."""
        h = self.hparams
        rest, test = stratified_split(labels, h.test_size, h.seed, "data.test_size")
        train, val = stratified_split(labels[rest], h.val_size, h.seed, "data.val_size")
        train, val = self.train_and_val(rest[train], rest[val], labels)
        return train, val, test

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        images, labels, self.class_names = digit_images(self.hparams.channels)
        full = TensorDataset(images, torch.from_numpy(labels))
        train, val, test = self.split_digits(labels)
        self.data_train = TransformedSubset(full, train, self.transform(train=True))
        self.data_val = TransformedSubset(full, val, self.transform(train=False))
        self.data_test = TransformedSubset(full, test, self.transform(train=False))

    def in_memory(self, dataset: TransformedSubset) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = dataset.dataset.tensors
        return images[dataset.indices], labels[dataset.indices]
