"""Damaged data files found before training, each named: CIFAR-10 batches that do not unpickle to what the
archive holds, and images that cannot be decoded (a JPEG cut short by a failed copy), which are left out of their
split with a counted warning instead of stopping an epoch half way."""

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from src.errors import UserError

log = logging.getLogger(__name__)

CIFAR_PIXELS = 3 * 32 * 32


def cifar_batch_problem(path: Path) -> str | None:
    """Why `path` is not a CIFAR-10 batch (or batches.meta), or None when it is one."""
    try:
        with open(path, "rb") as file:
            entry = pickle.load(file, encoding="latin1")
    except Exception as err:  # random bytes, a truncated file, another pickle: all are unreadable here
        return f"it does not unpickle: {type(err).__name__}: {str(err)[:100]}"
    if not isinstance(entry, dict):
        return f"it holds a {type(entry).__name__}, not a dict"
    if path.name == "batches.meta":
        return None if "label_names" in entry else "it has no label_names"
    data, labels = entry.get("data"), entry.get("labels")
    if data is None or labels is None:
        return "it has no data or no labels"
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != CIFAR_PIXELS or len(labels) != len(data):
        return f"data of shape {data.shape} with {len(labels)} labels, not N x {CIFAR_PIXELS} with N labels"
    if len(labels) and not 0 <= min(labels) <= max(labels) <= 9:
        return "labels outside 0..9"
    return None


def check_cifar_batches(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        problem = cifar_batch_problem(folder / name)
        if problem:
            raise UserError(
                f"{folder / name} is not a CIFAR-10 batch ({problem}): extract cifar-10-python.tar.gz into "
                f"{folder.parent} again (data.verify_checksums=true checks every file's md5 sum)"
            )


def _decodes(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.convert("RGB")  # decodes every pixel: truncated files fail here
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def _looks_complete(path: Path) -> bool:
    """A JPEG ends with its end-of-image marker: reading the tail is cheap enough for every file at setup."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    try:
        with open(path, "rb") as file:
            file.seek(max(0, path.stat().st_size - 1024))
            return b"\xff\xd9" in file.read()
    except OSError:
        return False


def readable_images(files: Sequence[Path], labels: Sequence[int], split: str) -> tuple[list[Path], list[int]]:
    """The files (and their labels) that decode; those that do not are left out with one warning that counts and
    names them. Only files whose ending looks wrong are decoded, so this costs a 1 KiB read per image."""
    kept_files, kept_labels, bad = [], [], []
    for path, label in zip(files, labels, strict=True):
        problem = None if _looks_complete(Path(path)) else _decodes(Path(path))
        if problem:
            bad.append(f"{path} ({problem})")
        else:
            kept_files.append(path)
            kept_labels.append(label)
    if bad:
        log.warning(
            "left out %d of %d images of the %s split: they cannot be decoded: %s",
            len(bad), len(files), split, "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""),
        )  # fmt: skip
    return kept_files, kept_labels


def check_data_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"data.data_dir={root} is a file: point data.data_dir at a folder")


def extract_into(folder: Path) -> str:
    """Where the message tells the user to put the files: `folder`, unless it (or the nearest existing folder
    above it) cannot be written, as a read-only mount of a shared data set."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if os.access(existing, os.W_OK):
        return f"into {folder}"
    return f"into a folder you can write ({existing} is read-only) and point data.data_dir there"


def without_download_hint(err: Exception) -> str:
    """torchvision's message, less its 'You can use download=True to download it' (our message says when)."""
    return str(err).replace(" You can use download=True to download it", "").rstrip()
