"""Oxford Flowers102 through torchvision (`flowers-102/jpg`, `imagelabels.mat`, `setid.mat`), with the
official train / val / test splits (1 020 / 1 020 / 6 149 images)."""

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset
from torchvision.datasets import Flowers102

from src.data.base import ImageDataModule, TransformedSubset
from src.data.integrity import check_data_dir, extract_into, readable_images, without_download_hint
from src.errors import DataNotFoundError, UserError

log = logging.getLogger(__name__)


class _Flowers102(Flowers102):
    """torchvision's Flowers102, with its md5 checks optional (generated test files have other sums)."""

    def __init__(self, *args, verify_checksums: bool = True, **kwargs):
        if not verify_checksums:  # md5=None makes torchvision check only that each file exists
            self._file_dict = {key: (name, None) for key, (name, _) in Flowers102._file_dict.items()}
        super().__init__(*args, **kwargs)
        # an image that cannot be decoded would stop an epoch half way: left out here, with a counted warning
        self._image_files, self._labels = readable_images(self._image_files, self._labels, self._split)
        self.skipped: set[str] = set()

    def __getitem__(self, index: int):
        # an image damaged where the setup check does not look: warned about (once) and replaced by the next one
        for offset in range(len(self)):
            try:
                return super().__getitem__((index + offset) % len(self))
            except OSError as err:
                name = str(self._image_files[(index + offset) % len(self)])
                if name not in self.skipped:
                    self.skipped.add(name)
                    log.warning(
                        "skipped %s: it cannot be decoded (%s); %d skipped so far",
                        name,
                        err,
                        len(self.skipped),
                    )
        raise UserError(f"no image of the {self._split} split in {self._base_folder} can be decoded")


class Flowers102DataModule(ImageDataModule):
    style = "imagenet"

    def _dataset(self, split: str, transform=None, download: bool = False) -> Flowers102:
        root = Path(self.hparams.data_dir)
        check_data_dir(root)
        try:
            return _Flowers102(
                root,
                split=split,
                transform=transform,
                download=download,
                verify_checksums=self.hparams.verify_checksums,
            )
        except (RuntimeError, OSError) as err:
            files = {key: name for key, (name, _) in Flowers102._file_dict.items()}
            raise DataNotFoundError(
                f"Flowers102 is missing or corrupt in {root / 'flowers-102'} ({without_download_hint(err)}). Expected: jpg/image_XXXXX.jpg "
                f"(from {files['image']}), {files['label']}, {files['setid']}. Get them from "
                f"{Flowers102._download_url_prefix} {extract_into(root / 'flowers-102')}, or point data.data_dir at the "
                f"folder that holds flowers-102/ (data.download=true fetches them when online)."
            ) from err

    def prepare_data(self) -> None:
        self._dataset("train", download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        self.class_names = list(Flowers102.classes)
        if self.hparams.folds is None:
            self.data_train = self._dataset("train", self.transform(train=True))
            self.data_val = self._dataset("val", self.transform(train=False))
        else:  # the folds are cut from the official train and val splits together
            official = [self._dataset("train"), self._dataset("val")]
            pool = ConcatDataset(official)
            labels = np.concatenate([dataset._labels for dataset in official])
            train, val = self.train_and_val(
                np.arange(len(official[0])), np.arange(len(official[0]), len(pool)), labels
            )
            self.data_train = TransformedSubset(pool, train, self.transform(train=True))
            self.data_val = TransformedSubset(pool, val, self.transform(train=False))
        self.data_test = self._dataset("test", self.transform(train=False))
