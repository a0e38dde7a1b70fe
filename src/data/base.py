"""What every image DataModule shares: loader settings, transforms, a stratified, seeded split and the folds of
k-fold cross-validation."""

import logging
import math
from collections.abc import Sequence
from itertools import islice

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from src.data.augment import check_augment, gpu_loader_refusal
from src.data.gpu_loader import GPUBatches
from src.data.transforms import build_transforms
from src.errors import UserError
from src.upstream_fixes.lightning import TrainLoaderStateInDataModule

log = logging.getLogger(__name__)


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
    classes = len(set(labels))
    if not classes <= test_size <= len(labels) - classes:  # stratified: every class on both sides
        raise UserError(
            f"{setting}={test_size} must be between {classes} (one image per class) and "
            f"{len(labels) - classes}, of the {len(labels)} images it is split from"
        )
    return train_test_split(indices, test_size=test_size, stratify=labels, random_state=seed)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def kfold_split(
    labels: Sequence[int], folds: int, fold: int, seed: int, class_names: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) in `labels` of fold `fold` of a seeded, stratified k-fold split: val is that fold,
    train the other folds. The folds are disjoint, together they are all of `labels`, and each holds every class
    in its share of the images (within one image); the same seed gives the same folds."""
    if not _whole(folds) or folds < 2:
        raise UserError(
            f"data.folds={folds} must be a whole number of at least 2 (or null: no cross-validation)"
        )
    if not _whole(fold) or not 0 <= fold < folds:
        raise UserError(
            f"data.fold={fold} must be between 0 and {folds - 1} (data.folds={folds}): sweep every fold with "
            f"-m 'data.fold=range({folds})'"
        )
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if (smallest := counts[counts > 0].min()) < folds:  # a fold without the class would not measure it
        label = counts.tolist().index(smallest)
        raise UserError(
            f"class {class_names[label] if class_names else label} has {smallest} image(s) in train and val together: "
            f"data.folds={folds} needs at least {folds} per class; use fewer folds or add images"
        )
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels)
    return next(islice(splits, fold, None))


class ImageDataModule(TrainLoaderStateInDataModule, L.LightningDataModule):
    """Subclasses set `style` (see transforms.py), `native_size` and `channel_counts`, and fill the three data
    sets in setup(). `task`: multiclass (one class index per image) or multilabel (a multi-hot float vector per
    image)."""

    style: str
    native_size: int | None = None
    task: str = "multiclass"
    # the 'cifar'/'digits' training crop's padding in pixels; None: image_size // 8 (at least 1); 0: no crop
    crop_padding: int | None = None
    # the data.channels the data set can give (None: any): its images as they are stored, or converted by PIL
    channel_counts: tuple[int, ...] | None = (3,)
    # data.sampler's values (FileDataModule adds balanced); null, as older checkpoints have it, is default
    samplers: tuple[str, ...] = ("default", "repeated")

    def __init__(
        self,
        data_dir: str,
        image_size: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool | None = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        loader: str = "torch",
        cutout: int = 0,
        download: bool = True,
        verify_checksums: bool = True,
        seed: int = 42,
        interpolation: str = "bilinear",
        augment: dict | None = None,
        folds: int | None = None,
        fold: int = 0,
        crop_pct: float = 0.875,
        preprocessing_from: dict | None = None,
        channels: int = 3,
        sampler: str | None = "default",
        repeats: int = 3,
    ):
        """`augment`: the train-time policy of conf/augment/ (None: the data set's own crop/flip only).
        `folds`: k-fold cross-validation over train and val together, `fold` the one validated on (None: the
        data set's own train/val split). The test split is the same either way. `crop_pct`: the share of the
        image that photos' ('imagenet' style) evaluation keeps. `preprocessing_from`: which of image_size,
        interpolation, mean, std and crop_pct came from the model and which from the config (conf/model/timm.yaml),
        kept for the checkpoint's preprocessing facts. `channels`: of the images the model gets (1: grey), one
        mean and std per channel. `sampler`: how the training loader draws images (default: shuffled, each once
        per epoch; repeated: timm's RepeatAugSampler, each drawn image `repeats` times)."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None
        self.class_names: list[str] = []

    def train_and_val(
        self, train: Sequence[int], val: Sequence[int], labels: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`train` and `val` (indices into a data set whose labels are `labels`) as they are, or with data.folds
        set, fold data.fold of the two together as val and the other folds as train (self.class_names, where
        set already, name a class too small for the folds)."""
        h = self.hparams
        if h.folds is None:
            if h.fold != 0:
                raise UserError(
                    f"data.fold={h.fold} needs data.folds (the number of folds): add data.folds=5"
                )
            return np.asarray(train), np.asarray(val)
        pool = np.sort(np.concatenate([train, val]))  # sorted: the folds do not depend on how val was drawn
        fold_train, fold_val = kfold_split(
            np.asarray(labels)[pool], h.folds, h.fold, h.seed, self.class_names
        )
        return pool[fold_train], pool[fold_val]

    def transform(self, train: bool):
        h = self.hparams
        if h.augment:
            check_augment(h.augment)
        return build_transforms(
            self.style,
            h.image_size,
            h.mean,
            h.std,
            train,
            self.native_size,
            h.interpolation,
            h.augment,
            h.crop_pct,
            self.crop_padding,
        )

    def in_memory(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """All of `dataset` as (N x C x H x W uint8 images, labels): what data.loader=gpu puts on the device.
        Data sets small enough for that override it."""
        raise NotImplementedError

    @classmethod
    def fits_in_memory(cls) -> bool:
        """Whether the data set can be one uint8 tensor (it implements in_memory), as data.loader=gpu needs."""
        return cls.in_memory is not ImageDataModule.in_memory

    def loader_kind(self) -> str:
        """data.loader, with `auto` decided: gpu (the GPU-resident loader, also on a CPU) when the data set fits in
        memory and its augmentation runs on whole batches, else torch (a DataLoader)."""
        h = self.hparams
        if h.loader != "auto":
            return h.loader
        fits = self.fits_in_memory() and (h.sampler or "default") == "default"
        return "gpu" if fits and gpu_loader_refusal(h.augment) is None else "torch"

    def _check_loader(self) -> None:
        # here, not in __init__: Hydra would wrap the error of a constructor in its own
        h = self.hparams
        if h.loader not in ("torch", "gpu", "auto"):
            raise UserError(
                f"data.loader={h.loader} is unknown: use data.loader=torch (DataLoader), data.loader=gpu or "
                "data.loader=auto (gpu where the data set and its augmentation allow it)"
            )
        self.check_sampler()
        loader = self.loader_kind()
        if not 0 <= h.cutout < h.image_size:
            raise UserError(
                f"data.cutout={h.cutout} must be between 0 (off) and data.image_size={h.image_size}"
            )
        if h.cutout and loader != "gpu":
            raise UserError(
                f"data.cutout={h.cutout} is applied by the GPU-resident loader only: add data.loader=gpu"
            )
        if loader == "gpu" and (h.sampler or "default") != "default":
            # the GPU-resident loader draws its own batches (and resumes mid-epoch through its own state)
            raise UserError(
                f"data.sampler={h.sampler} needs a DataLoader: use data.loader=torch (or auto), or data.sampler=default"
            )
        if loader == "gpu" and (refusal := gpu_loader_refusal(h.augment)):
            raise UserError(refusal)
        if loader == "gpu" and not self.fits_in_memory():
            raise UserError(
                f"data.loader=gpu needs a data set that fits in memory as one uint8 tensor (cifar10, digits); "
                f"{type(self).__name__} reads images of varying sizes from disk: use data.loader=torch"
            )

    def check_sampler(self) -> None:
        h = self.hparams
        if (h.sampler or "default") not in self.samplers:
            raise UserError(f"data.sampler={h.sampler} is unknown: use one of {', '.join(self.samplers)}")
        if h.sampler == "repeated" and not (isinstance(h.repeats, int) and h.repeats >= 1):
            raise UserError(f"data.repeats={h.repeats}: use a whole number of at least 1 (DeiT: 3)")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader | GPUBatches:
        self._check_loader()
        h = self.hparams
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        # a last training batch of one image would stop BatchNorm ("expected more than 1 value per channel"):
        # dropped, and only then, so that every other run sees all of its images every epoch
        drop_last = shuffle and math.ceil(len(dataset) / world_size) % h.batch_size == 1
        if not shuffle and len(dataset) < world_size:  # a rank without a batch would wait for the others
            raise UserError(
                f"a validation or test split of {len(dataset)} images cannot give each of the {world_size} "
                "processes one: make data.val_size / data.test_size larger, or use fewer trainer.devices"
            )
        if self.loader_kind() == "gpu":
            images, labels = self.in_memory(dataset)
            # the recipe of transforms.py ('cifar': pad-crop + flip, 'digits': pad-crop), on whole batches
            return GPUBatches(
                images.to(device),
                labels.to(device),
                batch_size=h.batch_size,
                image_size=h.image_size,
                mean=h.mean,
                std=h.std,
                train=shuffle,
                interpolation=h.interpolation,
                crop_padding=max(1, h.image_size // 8) if self.crop_padding is None else self.crop_padding,
                flip=self.style == "cifar",
                cutout=h.cutout,
                seed=h.seed,
                rank=rank,
                world_size=world_size,
                drop_last=drop_last,
                epoch_of=(lambda: self.trainer.current_epoch) if self.trainer else None,
            )
        workers = h.num_workers > 0
        if shuffle:
            sampler = self.train_sampler(dataset)
            if sampler is None and world_size > 1:
                # the sampler Lightning would put in, made here: Lightning then keeps this loader, and with it the
                # place in the epoch that checkpoints save, instead of building a new one
                sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=h.seed)
            if h.sampler == "repeated":  # each rank draws len(sampler) images (timm's rounding)
                drop_last = len(sampler) % h.batch_size == 1
        elif world_size > 1:
            # DDP: each rank evaluates its own part of val/test and no image twice (Lightning's DistributedSampler
            # repeats images to even the parts out: the test metrics and the report would count them twice). A rank
            # may then run one batch fewer, which evaluation allows: DDP syncs its buffers on the first batch only
            # and the metrics sync at the epoch's end. Lightning keeps a DistributedSampler as it is
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        else:
            sampler = None
        # training: torchdata's DataLoader keeps its place in the epoch (sampler and workers), so that a fit
        # resumed from a mid-epoch checkpoint serves the rest of that epoch, not its first batches again
        return (StatefulDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=h.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=h.num_workers,
            # null: pin when training on a GPU (page-locked memory makes the copy asynchronous)
            pin_memory=device.type == "cuda" if h.pin_memory is None else h.pin_memory,
            persistent_workers=h.persistent_workers and workers,
            prefetch_factor=h.prefetch_factor if workers else None,
        )

    def train_sampler(self, dataset: Dataset) -> Sampler | None:
        """The training loader's sampler; None (data.sampler=default): shuffle, which Lightning shards under DDP.
        data.sampler=repeated: timm's RepeatAugSampler (DeiT's repeated augmentation) for this process's rank of
        the trainer's world size. An epoch keeps its number of images (rounded down to a multiple of 256 where there
        are more): a shuffled 1/repeats of the data, each image `repeats` times in a row, the copies dealt to
        different ranks, so each rank augments its own. Its order is seeded by the epoch alone (as timm's and
        DeiT's). It shards by itself: src.training.trainer keeps Lightning from sharding it again."""
        h = self.hparams
        if h.sampler != "repeated":
            return None
        from timm.data.distributed_sampler import RepeatAugSampler

        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, num_repeats=h.repeats)

    def train_dataloader(self) -> DataLoader | GPUBatches:
        if self.hparams.loader == "auto":  # say which one, as num_workers & co. only apply to the DataLoader
            if self.loader_kind() == "gpu":
                chosen = "the GPU-resident loader (whole batches, on the training device)"
            elif self.fits_in_memory():
                chosen = "a DataLoader (the augmentation runs per image)"
            else:
                chosen = "a DataLoader (the images are read from files)"
            log.info("data.loader=auto: %s", chosen)
        # the GPU-resident loader resumes mid-epoch where the checkpoint left it (src/upstream_fixes/lightning.py)
        return self.resumed_train_loader(self._loader(self.data_train, shuffle=True))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)
