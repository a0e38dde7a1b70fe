"""Tiny data sets written in the exact on-disk formats torchvision reads, for tests that cannot download."""

import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat
from torchvision.datasets import CIFAR10

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy images whose mean colour depends on the class, so a model can learn something from them."""
    base = (labels[:, None, None, None] * 25 + 20).astype(np.float64)
    return np.clip(base + rng.normal(0, 20, (len(labels), size, size, 3)), 0, 255).astype(np.uint8)


def write_fake_cifar10(root: Path, per_batch: int = 20, test_size: int = 20, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with five training batches, a test batch and batches.meta (pickles of
    uint8 rows of 3x32x32 pixels, as in the real archive)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in [(n, per_batch) for n, _ in CIFAR10.train_list] + [("test_batch", test_size)]:
        labels = np.arange(count) % 10
        images = _class_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(count, -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": images}, f)
    with open(folder / CIFAR10.meta["filename"], "wb") as f:
        pickle.dump({CIFAR10.meta["key"]: CIFAR10_CLASSES}, f)
    return Path(root)


def write_fake_flowers102(root: Path, per_split: int = 12, num_classes: int = 4, seed: int = 0) -> Path:
    """`root/flowers-102/` with jpg/image_XXXXX.jpg, imagelabels.mat (1-based labels) and setid.mat
    (1-based image ids under trnid/valid/tstid), as the Oxford archive has them."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    count = 3 * per_split
    labels = np.arange(count) % num_classes
    for image_id, image in enumerate(_class_images(labels, 40, rng), start=1):
        Image.fromarray(image).save(folder / "jpg" / f"image_{image_id:05d}.jpg")
    savemat(folder / "imagelabels.mat", {"labels": (labels + 1)[None, :]})
    ids = np.arange(1, count + 1)
    savemat(
        folder / "setid.mat",
        {
            "trnid": ids[:per_split][None],
            "valid": ids[per_split : 2 * per_split][None],
            "tstid": ids[2 * per_split :][None],
        },
    )
    return Path(root)
