"""Whether the data keeps up: augmented images/s of each loader alone, to set against the model's training rate."""

import time
from dataclasses import dataclass

from torch.utils.data import DataLoader, TensorDataset

from src.bench.timing import sync
from src.bench.workload import MEAN, STD
from src.data.base import TransformedSubset
from src.data.transforms import build_transforms


@dataclass(frozen=True)
class LoaderRates:
    """Augmented training images/s of each loader alone."""

    dataloader_img_s: float  # torch's DataLoader with the torchvision transforms, in `num_workers` workers
    gpu_loader_img_s: float  # src/data/gpu_loader.py, on the model's device


def loader_rate(loader, steps: int, device: str) -> float:
    iterator = iter(loader)
    next(iterator)  # workers started, first batch made
    sync(device)
    start, images = time.perf_counter(), 0
    for _, (batch, _) in zip(range(steps), iterator, strict=False):
        images += len(batch)
    sync(device)
    return images / (time.perf_counter() - start)


def measure_loaders(images, labels, gpu_loader, num_workers: int, steps: int, device: str) -> LoaderRates:
    """The rates of `gpu_loader` over `images` (uint8, 32 px) and of a DataLoader over the same images, with the
    same batch size and output size."""
    transforms = build_transforms("cifar", gpu_loader.image_size, MEAN, STD, train=True, native_size=32)
    dataset = TransformedSubset(TensorDataset(images, labels), range(len(images)), transforms)
    torch_loader = DataLoader(
        dataset, gpu_loader.batch_size, shuffle=True, num_workers=num_workers, pin_memory=device == "cuda",
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None,
    )  # fmt: skip
    return LoaderRates(
        dataloader_img_s=loader_rate(torch_loader, steps, device),
        gpu_loader_img_s=loader_rate(gpu_loader, steps, device),
    )
