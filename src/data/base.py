"""What every image DataModule shares: loader settings, transforms and a stratified, seeded split."""

from collections.abc import Sequence

import lightning as L
import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from src.data.transforms import build_transforms
from src.errors import UserError


class TransformedSubset(Dataset):
    """A view of `dataset` at `indices` with its own transform, so train and val can share one loaded set."""

    def __init__(self, dataset, indices: Sequence[int], transform):
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        image, label = self.dataset[self.indices[i]]
        return self.transform(image), label


def stratified_split(
    labels: Sequence[int], test_size: int, seed: int, setting: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded split that keeps every class in the same proportion on both sides."""
    indices = np.arange(len(labels))
    if not 0 < test_size < len(labels):
        raise UserError(
            f"{setting}={test_size} must be between 0 and the {len(labels)} images it is split from"
        )
    return train_test_split(indices, test_size=test_size, stratify=labels, random_state=seed)


class ImageDataModule(L.LightningDataModule):
    """Subclasses set `style` (see transforms.py) and `native_size`, and fill the three data sets in setup()."""

    style: str
    native_size: int | None = None

    def __init__(
        self,
        data_dir: str,
        image_size: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        download: bool = True,
        verify_checksums: bool = True,
        seed: int = 42,
        interpolation: str = "bilinear",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None
        self.class_names: list[str] = []

    def transform(self, train: bool):
        h = self.hparams
        return build_transforms(
            self.style, h.image_size, h.mean, h.std, train, self.native_size, h.interpolation
        )

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            shuffle=shuffle,
            num_workers=h.num_workers,
            pin_memory=h.pin_memory,
            persistent_workers=h.persistent_workers and h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)
