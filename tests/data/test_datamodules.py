"""DataModules read torchvision's on-disk formats, split deterministically and augment only training data."""

from collections import Counter

import pytest
import torch

from src.data.base import stratified_split
from src.data.cifar10 import CIFAR10DataModule
from src.data.digits import DigitsDataModule
from src.data.flowers102 import Flowers102DataModule
from src.errors import DataNotFoundError, UserError
from tests.fakes import CIFAR10_CLASSES

LOADER = dict(batch_size=4, num_workers=0, download=False, verify_checksums=False, seed=0)
CIFAR = dict(image_size=32, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3, **LOADER)


def test_cifar10_stratified_split_and_official_test_set(fake_cifar10):
    dm = CIFAR10DataModule(data_dir=str(fake_cifar10), val_size=20, **CIFAR)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (80, 20, 20)
    assert dm.class_names == CIFAR10_CLASSES
    val_labels = Counter(int(dm.data_val[i][1]) for i in range(len(dm.data_val)))
    assert val_labels == dict.fromkeys(range(10), 2)  # stratified: every class twice
    assert set(dm.data_train.indices).isdisjoint(dm.data_val.indices)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.shape == (4,)


def test_cifar10_split_is_seeded(fake_cifar10):
    def val_indices(seed):
        dm = CIFAR10DataModule(data_dir=str(fake_cifar10), val_size=20, **{**CIFAR, "seed": seed})
        dm.setup("fit")
        return sorted(dm.data_val.indices)

    assert val_indices(0) == val_indices(0) != val_indices(1)


def test_eval_transforms_are_deterministic_and_train_transforms_augment(fake_cifar10):
    dm = CIFAR10DataModule(data_dir=str(fake_cifar10), val_size=20, **CIFAR)
    dm.setup("fit")
    assert torch.equal(dm.data_val[0][0], dm.data_val[0][0])
    assert any(not torch.equal(dm.data_train[0][0], dm.data_train[0][0]) for _ in range(10))


def test_checksums_are_verified_by_default(fake_cifar10):
    dm = CIFAR10DataModule(data_dir=str(fake_cifar10), val_size=20, **{**CIFAR, "verify_checksums": True})
    with pytest.raises(DataNotFoundError, match="data.verify_checksums|missing or corrupt"):
        dm.setup("fit")


def test_flowers102_official_splits(fake_flowers102):
    dm = Flowers102DataModule(
        data_dir=str(fake_flowers102),
        image_size=24,
        num_classes=102,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        **LOADER,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (12, 12, 12)
    assert len(dm.class_names) == 102 and dm.class_names[0] == "pink primrose"
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 24, 24)
    assert labels.tolist() == [0, 1, 2, 3]  # imagelabels.mat is 1-based


def test_digits_upscaled_rgb_stratified_splits():
    dm = DigitsDataModule(
        data_dir="unused", image_size=16, num_classes=10, mean=[0.3] * 3, std=[0.4] * 3,
        val_size=180, test_size=360, **LOADER,
    )  # fmt: skip
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (1797 - 540, 180, 360)
    image, label = dm.data_test[0]
    assert image.shape == (3, 16, 16) and 0 <= int(label) < 10
    test_counts = Counter(int(dm.data_test[i][1]) for i in range(len(dm.data_test)))
    assert min(test_counts.values()) >= 35  # ~36 per class
    assert dm.class_names == [str(d) for d in range(10)]


def test_a_split_too_small_for_every_class_says_so():
    labels = [i % 10 for i in range(100)]
    with pytest.raises(UserError, match=r"data.val_size=5 must be between 10 \(one image per class\) and 90"):
        stratified_split(labels, test_size=5, seed=0, setting="data.val_size")
