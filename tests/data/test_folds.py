"""k-fold cross-validation (data.folds, data.fold) in every data module: the folds are disjoint, together they
are train and val, each is stratified, the test split is the one without folds, and a seed gives the same folds."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import ConcatDataset, TensorDataset
from torchvision.datasets import Flowers102

from src.data.base import kfold_split
from src.data.cifar10 import CIFAR10DataModule
from src.data.digits import DigitsDataModule
from src.data.flowers102 import Flowers102DataModule
from src.data.imagefolder import ImageFiles, ImageFolderDataModule
from src.data.manifest import CSVDataModule
from src.errors import UserError
from tests.conftest import QUICK, TINY_VIT, run_cli
from tests.data.test_imagefolder import write_images

FOLDS = 3
LOADER = dict(
    batch_size=4, num_workers=0, download=False, verify_checksums=False, mean=[0.5] * 3, std=[0.25] * 3
)


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for label, count in (("cat", 14), ("dog", 9), ("eel", 7)):  # unbalanced: stratification shows
        write_images(root / label, count, size=8)
    return root


@pytest.fixture(scope="module")
def manifest(class_folders) -> Path:
    rows = ["path,label"] + [
        f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(class_folders.rglob("*.png"))
    ]
    (class_folders / "labels.csv").write_text("\n".join(rows) + "\n")
    return class_folders / "labels.csv"


def data_modules(fake_cifar10, fake_flowers102, class_folders, manifest) -> dict:
    files = dict(image_size=8, num_classes=3, val_size=0.2, test_size=0.2, **LOADER)
    return {
        "digits": lambda **kw: DigitsDataModule(
            data_dir="unused", image_size=16, num_classes=10, val_size=180, test_size=360, **LOADER, **kw
        ),
        "cifar10": lambda **kw: CIFAR10DataModule(
            data_dir=str(fake_cifar10), image_size=32, num_classes=10, val_size=20, **LOADER, **kw
        ),
        "flowers102": lambda **kw: Flowers102DataModule(
            data_dir=str(fake_flowers102), image_size=24, num_classes=102, **LOADER, **kw
        ),
        "imagefolder": lambda **kw: ImageFolderDataModule(data_dir=str(class_folders), **files, **kw),
        "csv": lambda **kw: CSVDataModule(csv_path=str(manifest), **files, **kw),
    }


def images_and_labels(split) -> tuple[list, np.ndarray]:
    """What identifies each image of a split across setups (its file, or its index in the data set), and its
    label, read without decoding any image."""
    if isinstance(split, Flowers102):
        return [str(f) for f in split._image_files], np.array(split._labels)
    data = split.dataset
    if isinstance(data, ConcatDataset):  # flowers102's official train and val, pooled
        ids = [str(f) for part in data.datasets for f in part._image_files]
        labels = np.concatenate([part._labels for part in data.datasets])
    elif isinstance(data, ImageFiles):
        ids, labels = data.files.tolist(), data.targets
    elif isinstance(data, TensorDataset):
        ids, labels = list(range(len(data))), data.tensors[1].numpy()
    else:
        ids, labels = list(range(len(data))), np.array(data.targets)
    return [ids[i] for i in split.indices], np.asarray(labels)[split.indices]


def setup(make, seed: int = 0, **folds) -> dict[str, tuple[list, np.ndarray]]:
    dm = make(seed=seed, **folds)
    dm.setup("fit")
    return {name: images_and_labels(getattr(dm, f"data_{name}")) for name in ("train", "val", "test")}


@pytest.mark.parametrize("name", ["digits", "cifar10", "flowers102", "imagefolder", "csv"])
def test_folds_are_disjoint_stratified_cover_train_and_val_and_leave_test_alone(
    name, fake_cifar10, fake_flowers102, class_folders, manifest
):
    make = data_modules(fake_cifar10, fake_flowers102, class_folders, manifest)[name]
    plain = setup(make)
    pool = sorted(map(str, plain["train"][0] + plain["val"][0]))
    pool_counts = Counter(plain["train"][1].tolist() + plain["val"][1].tolist())
    folds = [setup(make, folds=FOLDS, fold=fold) for fold in range(FOLDS)]
    vals = [set(map(str, split["val"][0])) for split in folds]
    for split, val in zip(folds, vals, strict=True):
        assert split["test"][0] == plain["test"][0]  # the test split is untouched
        assert sorted(map(str, split["train"][0] + split["val"][0])) == pool  # train = the other folds
        assert val.isdisjoint(map(str, split["train"][0]))
        val_counts = Counter(split["val"][1].tolist())
        for label, count in pool_counts.items():  # every class in its share, within one image
            assert abs(val_counts[label] - count / FOLDS) < 1
    assert all(a.isdisjoint(b) for i, a in enumerate(vals) for b in vals[i + 1 :])
    assert sorted(set().union(*vals)) == pool
    assert _same(setup(make, folds=FOLDS, fold=1), folds[1])  # the same seed, the same folds


def _same(a: dict, b: dict) -> bool:
    return all(a[s][0] == b[s][0] and np.array_equal(a[s][1], b[s][1]) for s in a)


def test_the_same_seed_gives_the_same_folds_and_another_seed_others():
    labels = np.arange(100) % 4
    fold = kfold_split(labels, folds=5, fold=2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(fold, kfold_split(labels, 5, 2, seed=7), strict=True))
    assert not np.array_equal(fold[1], kfold_split(labels, 5, 2, seed=8)[1])


@pytest.mark.parametrize(
    ("folds", "fold", "message"),
    [
        (5, 5, r"data.fold=5 must be between 0 and 4 \(data.folds=5\)"),
        (5, -1, r"data.fold=-1 must be between 0 and 4"),
        (1, 0, r"data.folds=1 must be a whole number of at least 2"),
        (30, 0, r"class 0 has 25 image\(s\) in train and val together: data.folds=30 needs at least 30"),
    ],
)
def test_fold_settings_out_of_range_say_what_to_pass(folds, fold, message):
    with pytest.raises(UserError, match=message):
        kfold_split(np.arange(100) % 4, folds, fold, seed=0)


def test_a_class_too_small_for_the_folds_is_named(class_folders):
    dm = ImageFolderDataModule(
        data_dir=str(class_folders),
        image_size=8,
        num_classes=3,
        val_size=0.2,
        test_size=0.2,
        folds=7,
        **LOADER,
    )
    with pytest.raises(
        UserError, match=r"class eel has 6 image\(s\) in train and val together: data.folds=7"
    ):
        dm.setup("fit")


def test_a_fold_without_folds_says_to_set_them():
    dm = DigitsDataModule(
        data_dir="unused", image_size=16, num_classes=10, val_size=180, test_size=360, fold=2, **LOADER
    )
    with pytest.raises(UserError, match="data.fold=2 needs data.folds"):
        dm.setup("fit")


def test_a_fold_out_of_range_stops_the_command_with_one_error_line(tmp_path):
    result = run_cli(
        "src.train",
        "data=digits",
        *TINY_VIT,
        *QUICK,
        "data.folds=5",
        "data.fold=5",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: data.fold=5 must be between 0 and 4 (data.folds=5): sweep every fold with")
