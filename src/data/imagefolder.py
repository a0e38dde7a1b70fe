"""Your own images: class folders (`data=imagefolder`), and what the CSV manifest (manifest.py) shares with them.

Two layouts: `data_dir/{train,val,test}/<class>/<image>` (a missing val or test is split off train) or
`data_dir/<class>/<image>` (all three splits are made). Splits are seeded and stratified; class names are the
folder names, sorted. Files are scanned once, at setup, by global rank 0 (the others receive its result):
hidden files, non-images and unreadable or truncated images are left out with one warning."""

import logging
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from src.data.base import ImageDataModule, TransformedSubset, stratified_split
from src.data.file_checks import CHECKS, unreadable_files
from src.data.files import IMAGE_EXTENSIONS, image_mode, open_image, warn_skipped
from src.errors import UserError

SPLITS = ("train", "val", "test")

log = logging.getLogger(__name__)


@dataclass
class Index:
    """What the scan found: every usable file with its class index and split ('' = not assigned: carved by
    data.val_size / data.test_size), the class names, and the files left out ({path: reason})."""

    class_names: list[str]
    files: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    # (split, class index) -> where the user put those files (a folder, or the CSV and its class): for errors
    origin: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    total: int = 0
    # each file's size and mtime_ns, in turn, where the scan stat'ed it (what the file check cache is keyed by)
    stamps: array = field(default_factory=lambda: array("q"))

    def add(self, path: str, label: int, split: str, stamp: tuple[int, int] | None = None) -> None:
        self.files.append(path)
        self.labels.append(label)
        self.splits.append(split)
        if stamp is not None:
            self.stamps.extend(stamp)

    def drop_unreadable(
        self, where: str, root: str | Path, check: str = "decode", processes: int | None = None
    ):
        """Leaves out the files that data.check_files=`check` finds unreadable (file_checks.py), with one warning
        for all the files the scan left out."""
        stamps = None
        if len(self.stamps) == 2 * len(self.files):
            stamps = np.frombuffer(self.stamps, dtype=np.int64).reshape(-1, 2)
        bad = unreadable_files(self.files, root, check, processes, stamps)
        self.skipped |= bad
        if bad:
            keep = [i for i, path in enumerate(self.files) if path not in bad]
            self.files, self.labels, self.splits = (
                [values[i] for i in keep] for values in (self.files, self.labels, self.splits)
            )
        self.stamps = array("q")
        warn_skipped(self.skipped, self.total, where)


class ImageFiles(Dataset):
    """Image files and their labels; `targets` as in torchvision's data sets (no file is read to count them):
    class indices, or (multi-label) rows of 0/1 floats."""

    def __init__(self, files: list[str], targets, mode: str = "RGB"):
        # numpy arrays, not lists of str: forked loader workers then share them instead of copying them page by
        # page as Python's reference counts are touched (PyTorch issue #13246)
        self.files, self.targets, self.mode = np.array(files), np.asarray(targets), mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        target = self.targets[i]
        return open_image(self.files[i], self.mode), torch.from_numpy(target) if target.ndim else int(target)

    def encoded(self, i: int) -> tuple[bytes, str]:
        """The file's own bytes and extension (what src.shards stores)."""
        path = Path(self.files[i])
        return path.read_bytes(), path.suffix.lstrip(".").lower()


def _expand(path: str | Path) -> Path:
    return Path(os.path.expanduser(str(path)))


def _layout(data_dir: Path) -> tuple[Path, dict[str, Path]]:
    """(the folder whose subfolders name the classes, {split: its folder} for the splits given as folders)."""
    if not data_dir.is_dir():
        raise UserError(
            f"data.data_dir={data_dir} is not a folder: point it at a folder of class folders "
            "(<data_dir>/<class>/<image>) or of train/val/test folders (<data_dir>/train/<class>/<image>)"
        )
    if (data_dir / "train").is_dir():
        return data_dir / "train", {s: data_dir / s for s in SPLITS if (data_dir / s).is_dir()}
    return data_dir, {}


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_classes(data_dir: str | Path) -> list[str]:
    """The class names of an image folder (sorted folder names), without reading any image."""
    if data_dir is None:
        raise UserError("data.data_dir is not set: pass data.data_dir=<your folder of class folders>")
    data_dir = _expand(data_dir)
    classes_dir, _ = _layout(data_dir)
    names = _class_folders(classes_dir)
    if not names:
        raise UserError(
            f"no class folders in {classes_dir}: put each class's images in a folder named after the class "
            f"({classes_dir}/<class>/<image>)"
        )
    return names


def _identity(path: Path) -> tuple[int, int] | None:
    """What a path is on disk, links followed (device, inode); None for a path that cannot be read (a link to
    nothing: the readability check names it)."""
    info = _stat(path)
    return None if info is None else (info.st_dev, info.st_ino)


def _stat(path: str | Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _walk(folder: Path, entered: set, not_followed: dict[str, str]):
    """Every file below `folder` (followed links included), as path strings; hidden folders are not entered, nor is a
    folder that is in `entered` (each folder entered is added): a link loop such as `cat/self -> .` or
    `cat/up -> ..`, or a link into another class folder, is noted in `not_followed` instead."""
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            identity = _identity(Path(root) / name)
            if identity in entered:
                not_followed[str(Path(root) / name)] = str((Path(root) / name).resolve())
                continue
            entered.add(identity)
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            yield os.path.join(root, name)


def _warn_not_followed(not_followed: dict[str, str], shown: int = 5) -> None:
    if not not_followed:
        return
    named = "; ".join(f"{link} -> {target}" for link, target in list(not_followed.items())[:shown])
    more = f"; and {len(not_followed) - shown} more" if len(not_followed) > shown else ""
    log.warning(
        "did not follow %d folder link(s) to folders scanned already (a loop, or a link into another class "
        "folder: each file is read once, with the class of the folder it is in): %s%s",
        len(not_followed), named, more,
    )  # fmt: skip


def scan_folder(data_dir: str | Path, check: str = "decode", processes: int | None = None) -> Index:
    """Every readable image of every class folder (list_folder), as data.check_files=`check` finds them with
    `processes` processes (file_checks.py)."""
    index = list_folder(data_dir)
    index.drop_unreadable(str(_expand(data_dir)), _expand(data_dir), check, processes)
    return index


def list_folder(data_dir: str | Path) -> Index:
    """Every image file of every class folder, per split folder (layout 1) or unassigned (layout 2), none read
    yet. Each file on disk is listed once, however many links lead to it."""
    data_dir = _expand(data_dir)
    names = folder_classes(data_dir)
    classes_dir, split_dirs = _layout(data_dir)
    index = Index(class_names=names)
    roots = [data_dir, classes_dir, *split_dirs.values()]
    entered = {_identity(folder / name) for folder in roots for name in _class_folders(folder)}
    entered |= {_identity(folder) for folder in roots}
    entered.discard(None)
    not_followed: dict[str, str] = {}
    first_path: dict[tuple[int, int], str] = {}  # of each file on disk
    for split, split_dir in split_dirs.items() or [("", classes_dir)]:
        found = _class_folders(split_dir)
        if split and set(found) != set(names):
            missing, extra = sorted(set(names) - set(found)), sorted(set(found) - set(names))
            raise UserError(
                f"the class folders of {split_dir} differ from those of {classes_dir}: "
                + (f"missing {', '.join(missing)}" if missing else f"not in train: {', '.join(extra)}")
                + ". Every split needs the same class folders (an empty class is no class: remove it everywhere)"
            )
        for label, name in enumerate(names):
            index.origin[split, label] = str(split_dir / name)
            for path in _walk(split_dir / name, entered, not_followed):
                index.total += 1
                info = _stat(path)
                identity = None if info is None else (info.st_dev, info.st_ino)
                suffix = os.path.splitext(path)[1]
                # .DS_Store, ._photo.jpg (macOS); hidden folders (.git) are not entered
                if os.path.basename(path).startswith("."):
                    index.skipped[path] = "hidden file"
                elif suffix.lower() not in IMAGE_EXTENSIONS:
                    index.skipped[path] = f"not an image: {suffix or 'no'} extension"
                elif identity in first_path:
                    index.skipped[path] = f"the same file as another: {first_path[identity]}"
                else:
                    if identity is not None:
                        first_path[identity] = path
                    index.add(path, label, split, (info.st_size, info.st_mtime_ns) if info else (-1, -1))
    _warn_not_followed(not_followed)
    return index


def _split_count(size: float, n: int, setting: str) -> int:
    """data.val_size / data.test_size: a fraction (0 < size < 1) of the `n` images, or a number of images."""
    if isinstance(size, bool) or not isinstance(size, int | float) or size <= 0:
        raise UserError(f"{setting}={size} must be a fraction (0.1) or a number of images (100)")
    if size < 1:
        return max(1, round(size * n))
    if size != int(size):
        raise UserError(f"{setting}={size} must be a fraction below 1 (0.1) or a whole number of images")
    return int(size)


def assign_splits(index: Index, val_size: float, test_size: float, seed: int) -> dict[str, np.ndarray]:
    """{split: indices into index.files}: the splits given, and val/test carved from train (or from all the
    files, when none is given) with a seeded, stratified split; the same classes in each."""
    if not index.files:
        raise UserError(
            f"no readable images among the {index.total} files found: put images "
            f"({', '.join(IMAGE_EXTENSIONS)}) in the class folders"
        )
    labels, splits = np.array(index.labels), np.array(index.splits)
    given = {s: np.flatnonzero(splits == s) for s in SPLITS if (splits == s).any()}
    # what val/test are carved from: the unassigned files (layout 2, empty CSV splits), else train
    pool_split = "" if "" in index.splits else "train"
    pool = np.flatnonzero(splits == "") if pool_split == "" else given.pop("train", np.array([], int))
    carved = [(s, size) for s, size in (("test", test_size), ("val", val_size)) if s not in given]
    num_classes = len(index.class_names)

    def where(split: str, label: int) -> str:
        return (
            index.origin.get((split, label))
            or index.origin.get((pool_split, label))
            or index.class_names[label]
        )

    counts, needed = np.bincount(labels[pool], minlength=num_classes), 1 + len(carved)
    for label in np.flatnonzero((counts > 0) & (counts < needed)):
        raise UserError(
            f"class {where(pool_split, label)} has {counts[label]} image(s): splitting off "
            f"{' and '.join(s for s, _ in carved)} (stratified) needs at least {needed} per class. Add images, or "
            "give the splits as folders (or a split column) yourself"
        )
    sizes = {split: _split_count(size, len(pool), f"data.{split}_size") for split, size in carved}
    for split, _ in carved:  # test first, then val from the rest: as the built-in data sets split
        rest, part = stratified_split(labels[pool], sizes[split], seed, f"data.{split}_size")
        given[split], pool = pool[part], pool[rest]
    given["train"] = np.concatenate([given.get("train", np.array([], int)), pool])
    for split in SPLITS:  # every class in every split: metrics and the report compare them
        for label in np.flatnonzero(np.bincount(labels[given[split]], minlength=num_classes) == 0):
            raise UserError(
                f"class folder {where(split, label)} has no readable images: add images, or remove the class "
                "(from every split)"
                if not (labels == label).any()
                else f"class {index.class_names[label]} has no images in the {split} split "
                f"({where(split, label)}): add some there"
            )
    return {split: np.sort(given[split]) for split in SPLITS}


class FileDataModule(ImageDataModule):
    """Images read from files listed by `scan()` (a folder, a CSV manifest); `style` picks the augmentation
    recipe of transforms.py ('imagenet' for photos; 'digits'/'cifar' for small images of one size)."""

    channel_counts = (1, 3)  # read as grey (PIL's mode "L") or RGB
    # balanced: each class drawn equally often (EpochSeededSampler)
    samplers = (*ImageDataModule.samplers, "balanced")

    def __init__(
        self,
        val_size: float = 0.1,
        test_size: float = 0.1,
        style: str = "imagenet",
        check_files: str = "decode",
        **kwargs,
    ):
        """`check_files`: how the setup scan checks that each file is a readable image (decode, open, none;
        file_checks.py)."""
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.style = style
        self.split_counts: dict[str, dict[str, int]] = {}

    def scan(self) -> Index:
        raise NotImplementedError

    def check_processes(self) -> int | None:
        """The processes that check files at setup: data.num_workers (the cores when 0)."""
        return self.hparams.num_workers or None

    def dataset(self, index: Index, labels: np.ndarray) -> Dataset:
        """The images the scan listed, as (PIL image, label) pairs in the order of index.files; `labels`: as
        label_array gives them."""
        return ImageFiles(index.files, labels, image_mode(self.hparams.channels))

    def assign_splits(self, index: Index) -> dict[str, np.ndarray]:
        h = self.hparams
        return assign_splits(index, h.val_size, h.test_size, h.seed)

    def label_array(self, index: Index) -> np.ndarray:
        """The labels of index.files as the data set serves them (here class indices)."""
        return np.array(index.labels)

    def train_targets(self) -> torch.Tensor:
        """The training split's labels (multi-label: what module.class_weights=balanced weighs by)."""
        return torch.as_tensor(self.data_train.dataset.targets[self.data_train.indices])

    def _scan_and_split(self) -> tuple[Index, dict[str, np.ndarray]] | UserError:
        try:
            index = self.scan()
            return index, self.assign_splits(index)
        except UserError as err:  # handed to every rank, which raises it (instead of waiting for rank 0)
            return err

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        self.check_sampler()  # before the scan of a large folder
        if self.hparams.check_files not in CHECKS:
            raise UserError(f"data.check_files={self.hparams.check_files} is not one of {', '.join(CHECKS)}")
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # DDP: rank 0 scans (once, not once per rank: a folder of 100 000 files is read once) and sends the
            # file lists to the other ranks; each then reads only its own shard of them (DistributedSampler)
            result = trainer.strategy.broadcast(self._scan_and_split() if trainer.is_global_zero else None)
        else:
            result = self._scan_and_split()
        if isinstance(result, UserError):
            raise result
        index, splits = result
        if self.hparams.num_classes != len(index.class_names):
            raise UserError(
                f"data.num_classes={self.hparams.num_classes}, but the data have {len(index.class_names)} "
                f"classes ({', '.join(index.class_names[:10])}): leave data.num_classes unset (it is counted)"
            )
        try:
            self.transform(train=True)
        except ValueError as err:  # an unknown data.style
            raise UserError(f"data.style={self.style}: {err}") from None
        self.class_names = index.class_names
        labels = self.label_array(index)
        full = self.dataset(index, labels)
        if self.task == "multilabel" and (
            self.hparams.folds is not None or self.hparams.sampler not in (None, "default")
        ):
            raise UserError(
                "data.folds and data.sampler split and draw single-label data only: leave them null"
            )
        if self.task == "multiclass":
            splits["train"], splits["val"] = self.train_and_val(splits["train"], splits["val"], labels)
        for split in SPLITS:
            subset = TransformedSubset(full, splits[split], self.transform(train=split == "train"))
            setattr(self, f"data_{split}", subset)
            if self.task == "multilabel":  # images with each label
                counts = labels[splits[split]].sum(axis=0).astype(int)
            else:
                counts = np.bincount(labels[splits[split]], minlength=len(self.class_names))
            self.split_counts[split] = dict(zip(self.class_names, counts.tolist(), strict=True))

    def train_sampler(self, dataset: TransformedSubset) -> WeightedRandomSampler | None:
        if self.hparams.sampler != "balanced":
            return super().train_sampler(dataset)
        labels = dataset.dataset.targets[dataset.indices]
        weights = 1.0 / np.bincount(labels)[labels]  # each class drawn equally often, in expectation
        return EpochSeededSampler(weights, len(labels), self.hparams.seed, self._epoch)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer else 0


class EpochSeededSampler(WeightedRandomSampler):
    """torch's WeightedRandomSampler (with replacement), its draws a function of (seed, epoch) alone. Under DDP,
    Lightning wraps it in its DistributedSamplerWrapper, which lets every rank draw the whole epoch and keep
    its own 1/world_size share: the ranks draw the same sequence, so their shares do not overlap. A resumed fit
    draws what the uninterrupted one would have."""

    def __init__(self, weights, num_samples: int, seed: int, epoch_of):
        super().__init__(weights, num_samples, replacement=True)
        self.seed, self.epoch_of = seed, epoch_of

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch_of())
        return super().__iter__()


class ImageFolderDataModule(FileDataModule):
    def scan(self) -> Index:
        return scan_folder(self.hparams.data_dir, self.hparams.check_files, self.check_processes())
