"""A loader for data sets that fit in device memory (CIFAR-10, digits): the uint8 images live on the device and
each batch is augmented there as one tensor (as airbench and other fast CIFAR-10 trainers do), so no worker
process, collate or host-to-device copy stands between the model and its data.

It reproduces the 'cifar'/'digits' recipes of transforms.py on whole batches: resize to `image_size` (with the
data config's interpolation), reflect-padded random crop, horizontal flip (optional), normalisation; plus
optional cutout. The same code runs on CPU tensors, which is how it is tested.
"""

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class GPUBatches:
    """Batches of (normalised float images, labels) from `images` (N, C, H, W uint8) and `labels` (int64 class
    indices, or N x labels multi-hot floats for multi-label data),
    both already on the device the model trains on. `train` shuffles every epoch and augments; otherwise
    batches come in order, un-augmented, and are the same every time. With several processes (DDP) each
    rank takes its own share (`rank::world_size`) of one permutation that all ranks draw alike.
    Lightning takes any sized iterable as a loader; its transfer_batch_to_device finds these batches on the
    device already, so `.to()` returns them as they are (no copy).

    Resumable: the shuffle of an epoch and the augmentation of each batch are drawn from seeds made of (`seed`,
    epoch, rank, batch), the epoch number comes from `epoch_of` (the trainer's current epoch; without it each
    pass is the next epoch), and `state_dict()` says how far the epoch got, which checkpoints keep (through the
    DataModule, see data/base.py). A fit resumed from any checkpoint, mid-epoch included, sees the batches the
    uninterrupted fit would have seen."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        interpolation: str = "bilinear",
        crop_padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        epoch_of: Callable[[], int] | None = None,
        resized_cache_bytes: int = 256 * 2**20,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected N x C x H x W uint8 images and N labels, got {images.shape} {images.dtype}"
            )
        dtype = labels.dtype if labels.is_floating_point() else torch.int64
        self.images, self.labels = images, labels.to(images.device, dtype)
        self.batch_size, self.image_size, self.train = batch_size, image_size, train
        self.interpolation = interpolation
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        # on the device once, not per batch (torchvision's normalize takes tensors as they are)
        self.mean = torch.tensor(mean, device=images.device)
        self.std = torch.tensor(std, device=images.device)
        # drawn on the data's device, so the random numbers need no host-to-device copy either
        self.generator = torch.Generator(images.device)
        self.epoch_of, self._passes = epoch_of, 0
        self._progress = {"epoch": 0, "batches": 0}  # of the epoch being served: what state_dict() returns
        self._resume: dict | None = None
        # images that need resizing (digits' 8 px to 16) are resized and normalised once, as a hand-written loop
        # would, when the floats fit `resized_cache_bytes`; larger sets (CIFAR at 224 px) are resized per batch
        resized_bytes = len(images) * images.shape[1] * image_size**2 * 4
        needs_resize = images.shape[-2:] != (image_size, image_size)
        self._resized = (
            self._normalised(images) if needs_resize and resized_bytes <= resized_cache_bytes else None
        )

    def state_dict(self) -> dict:
        return dict(self._progress)

    def load_state_dict(self, state: dict) -> None:
        # used by the next pass if it is of the same epoch (a fit resumed mid-epoch); after a checkpoint at an
        # epoch's end the trainer is in the next epoch, which starts from its beginning
        self._resume = dict(state)

    def _reseed(self, *key: int) -> torch.Generator:
        # Python hashes tuples of ints alike in every process (PYTHONHASHSEED affects strings only)
        return self.generator.manual_seed(hash((self.seed, *key)) & (2**63 - 1))

    @property
    def device(self) -> torch.device:
        return self.images.device

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        order = (
            torch.randperm(n, device=self.device, generator=self._reseed(epoch))  # alike on every rank
            if self.train
            else torch.arange(n, device=self.device)
        )
        if self.train:
            # as DistributedSampler does: wrap around so that every rank gets as many samples (DDP steps in
            # lockstep); evaluation sees each image once (see data/base.py)
            order = torch.cat([order, order[: self._per_rank() * self.world_size - n]])
        return order[self.rank :: self.world_size]

    def _per_rank(self) -> int:
        n = len(self.images)
        return math.ceil(n / self.world_size) if self.train else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_of() if self.epoch_of else self._passes
        self._passes += 1
        resume, self._resume = self._resume, None
        done = resume["batches"] if resume and resume["epoch"] == epoch else 0
        batches = self._indices(epoch).split(self.batch_size)[
            : len(self)
        ]  # drop_last: not the incomplete one
        for i, batch in enumerate(batches):
            if i < done:  # served before the checkpoint this fit resumed from
                continue
            self._progress = {"epoch": epoch, "batches": i + 1}
            if self.train:
                self._reseed(epoch, self.rank, i)
            normalised = (
                self._resized[batch] if self._resized is not None else self._normalised(self.images[batch])
            )
            yield self._augmented(normalised), self.labels[batch]

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        """The DataLoader's eval transform (transforms.py) on a whole batch, through the same torchvision functions
        (resize the uint8 images, scale to [0, 1], normalise): on the same device, the same tensors."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = TF.resize(
                images,
                [self.image_size] * 2,
                interpolation=v2.InterpolationMode(self.interpolation),
                antialias=True,
            )
        return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), self.mean, self.std)

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        if not self.train:
            return x
        if self.crop_padding:
            x = self._random_crop(x)
        if self.flip:
            flipped = torch.rand(len(x), device=self.device, generator=self.generator) < 0.5
            x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.cutout:
            x = self._cutout(x)
        return x

    def _offsets(self, n: int, high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), device=self.device, generator=self.generator)

    def _random_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pads by `crop_padding` and cuts each image's own window, all in one gather."""
        n, _, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p), mode="reflect").permute(0, 2, 3, 1)  # N, H, W, C: gather pixels
        rows = self._offsets(n, 2 * p + 1)[:, None, None] + torch.arange(h, device=self.device)[:, None]
        cols = self._offsets(n, 2 * p + 1)[:, None, None] + torch.arange(w, device=self.device)
        samples = torch.arange(n, device=self.device)[:, None, None]
        return padded[samples, rows, cols].permute(0, 3, 1, 2).contiguous()

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        """Zeroes (the mean colour, after normalisation) one `cutout` x `cutout` square per image, placed
        wholly inside it (DeVries & Taylor 2017)."""
        n, _, h, w = x.shape
        top = self._offsets(n, h - self.cutout + 1)[:, None]
        left = self._offsets(n, w - self.cutout + 1)[:, None]
        rows, cols = torch.arange(h, device=self.device), torch.arange(w, device=self.device)
        in_rows = (rows >= top) & (rows < top + self.cutout)
        in_cols = (cols >= left) & (cols < left + self.cutout)
        square = in_rows[:, :, None] & in_cols[:, None, :]
        return x.masked_fill(square[:, None], 0.0)
