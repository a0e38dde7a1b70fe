"""scikit-learn's bundled handwritten digits (1 797 images of 8x8 px, 10 classes): real images that need
no download, so the quickstart and the tests train for real offline."""

import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from src.data.base import ImageDataModule, TransformedSubset, stratified_split


class DigitsDataModule(ImageDataModule):
    style = "digits"
    native_size = 8
    channel_counts = None  # grey, repeated in as many channels as the model takes

    def __init__(self, val_size: int, test_size: int, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        digits = load_digits()
        # 0..16 grey levels -> uint8 in data.channels channels (3: RGB), so the same transforms as for photos apply
        images = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8)
        images = images.unsqueeze(1).expand(-1, self.hparams.channels, -1, -1).contiguous()
        labels = torch.from_numpy(digits.target)
        full = TensorDataset(images, labels)
        h = self.hparams
        self.class_names = [str(name) for name in digits.target_names]
        rest, test = stratified_split(digits.target, h.test_size, h.seed, "data.test_size")
        train, val = stratified_split(digits.target[rest], h.val_size, h.seed, "data.val_size")
        train, val = self.train_and_val(rest[train], rest[val], digits.target)
        self.data_train = TransformedSubset(full, train, self.transform(train=True))
        self.data_val = TransformedSubset(full, val, self.transform(train=False))
        self.data_test = TransformedSubset(full, test, self.transform(train=False))

    def in_memory(self, dataset: TransformedSubset) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = dataset.dataset.tensors
        return images[dataset.indices], labels[dataset.indices]
