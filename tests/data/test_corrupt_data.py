"""Damaged data files: a CIFAR-10 batch that does not unpickle as one ends with one line naming it; a truncated
Flowers102 JPEG is left out at setup with a counted warning instead of stopping an epoch."""

import pickle
import shutil

import numpy as np
import pytest

from src.data.cifar10 import CIFAR10DataModule
from src.data.flowers102 import Flowers102DataModule
from src.errors import UserError

COMMON = dict(
    image_size=32, mean=[0.5] * 3, std=[0.5] * 3, batch_size=4, download=False, verify_checksums=False
)


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "wrong_shape"])
def test_a_damaged_cifar_batch_is_named(damage, fake_cifar10, tmp_path):
    root = tmp_path / "cifar"
    shutil.copytree(fake_cifar10, root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    if damage == "random_bytes":
        batch.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":
        batch.write_bytes(batch.read_bytes()[:2000])
    else:
        entry = pickle.loads(batch.read_bytes(), encoding="latin1")
        entry["data"] = np.asarray(entry["data"])[:, :100]
        batch.write_bytes(pickle.dumps(entry))
    data = CIFAR10DataModule(val_size=20, data_dir=str(root), num_classes=10, **COMMON)
    with pytest.raises(UserError, match="data_batch_3 is not a CIFAR-10 batch"):
        data.prepare_data()
        data.setup("fit")


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "file").write_text("x")
    data = CIFAR10DataModule(val_size=20, data_dir=str(tmp_path / "file"), num_classes=10, **COMMON)
    with pytest.raises(UserError, match="is a file"):
        data.prepare_data()


def test_a_missing_data_set_does_not_suggest_download_true_when_it_is_off(tmp_path):
    data = CIFAR10DataModule(val_size=20, data_dir=str(tmp_path), num_classes=10, **COMMON)
    with pytest.raises(UserError) as error:
        data.prepare_data()
    assert "You can use download=True" not in str(error.value)


def test_a_truncated_flowers_jpeg_is_left_out_with_a_counted_warning(fake_flowers102, tmp_path, caplog):
    root = tmp_path / "flowers"
    shutil.copytree(fake_flowers102, root)
    image = root / "flowers-102" / "jpg" / "image_00002.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    data = Flowers102DataModule(data_dir=str(root), num_classes=102, **COMMON)
    data.setup("fit")
    assert len(data.data_train) == 11
    assert "left out 1 of 12 images of the train split" in caplog.text and "image_00002.jpg" in caplog.text
    for index in range(len(data.data_train)):  # a whole epoch reads
        data.data_train[index]


def test_an_image_damaged_in_the_middle_is_skipped_with_a_warning_when_read(
    fake_flowers102, tmp_path, caplog
):
    root = tmp_path / "flowers"
    shutil.copytree(fake_flowers102, root)
    image = root / "flowers-102" / "jpg" / "image_00003.jpg"
    content = image.read_bytes()
    image.write_bytes(content[:20] + b"\x00" * 200 + content[-2:])  # header kept, end marker kept, body gone
    data = Flowers102DataModule(data_dir=str(root), num_classes=102, **COMMON)
    data.setup("fit")
    for index in range(len(data.data_train)):
        data.data_train[index]
    assert "image_00003.jpg" in caplog.text and "1 skipped so far" in caplog.text
