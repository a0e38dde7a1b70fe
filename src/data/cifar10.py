"""CIFAR-10 through torchvision (its `cifar-10-batches-py` pickles): a seeded, stratified train/val split
of the 50 000 training images, and the official 10 000 test images as the test set."""

import pickle
from pathlib import Path

import torch
from torchvision.datasets import CIFAR10

from src.data.base import ImageDataModule, TransformedSubset, stratified_split
from src.data.integrity import check_cifar_batches, check_data_dir, extract_into, without_download_hint
from src.errors import DataNotFoundError


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10, with its md5 checks optional (generated test files have other sums)."""

    def __init__(self, *args, verify_checksums: bool = True, **kwargs):
        if not verify_checksums:  # md5=None makes torchvision check only that each file exists
            self.train_list = [(name, None) for name, _ in CIFAR10.train_list]
            self.test_list = [(name, None) for name, _ in CIFAR10.test_list]
            self.meta = {**CIFAR10.meta, "md5": None}
        super().__init__(*args, **kwargs)


class CIFAR10DataModule(ImageDataModule):
    style = "cifar"
    native_size = 32

    def __init__(self, val_size: int, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)

    def _dataset(self, train: bool, download: bool = False) -> CIFAR10:
        root = Path(self.hparams.data_dir)
        check_data_dir(root)
        try:
            return _CIFAR10(
                root, train=train, download=download, verify_checksums=self.hparams.verify_checksums
            )
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError):
            names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
            check_cifar_batches(root / CIFAR10.base_folder, names)
            raise  # every file reads as a CIFAR batch: not a data problem
        except (RuntimeError, OSError) as err:
            files = ", ".join(name for name, _ in CIFAR10.train_list + CIFAR10.test_list)
            raise DataNotFoundError(
                f"CIFAR-10 is missing or corrupt in {root / CIFAR10.base_folder} ({without_download_hint(err)}). Expected: {files}, "
                f"{CIFAR10.meta['filename']}. Get {CIFAR10.url} (see https://www.cs.toronto.edu/~kriz/cifar.html) "
                f"and extract it {extract_into(root)}, or point data.data_dir at the folder that holds "
                f"{CIFAR10.base_folder}/ (data.download=true fetches it when online)."
            ) from err

    def prepare_data(self) -> None:
        for train in (True, False):
            self._dataset(train, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        full = self._dataset(train=True)
        self.class_names = list(full.classes)
        train, val = stratified_split(full.targets, self.hparams.val_size, self.hparams.seed, "data.val_size")
        train, val = self.train_and_val(train, val, full.targets)
        self.data_train = TransformedSubset(full, train, self.transform(train=True))
        self.data_val = TransformedSubset(full, val, self.transform(train=False))
        test = self._dataset(train=False)
        self.data_test = TransformedSubset(test, range(len(test)), self.transform(train=False))

    def in_memory(self, dataset: TransformedSubset) -> tuple[torch.Tensor, torch.Tensor]:
        cifar = dataset.dataset  # its .data is N x H x W x C uint8
        images = torch.from_numpy(cifar.data[dataset.indices]).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(cifar.targets)[dataset.indices]
