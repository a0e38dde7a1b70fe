"""The GPU-resident loader (run on CPU tensors here): its batches, epochs, augmentation and resumption, and that
its batches are the DataLoader path's bit for bit (eval) or in statistics (training)."""

import re

import pytest
import torch
from omegaconf import OmegaConf

from src.data.cifar10 import CIFAR10DataModule
from src.data.digits import DigitsDataModule
from src.data.gpu_loader import GPUBatches
from src.train import train
from tests.conftest import CONF, QUICK, TINY_VIT, compose_config

PLAIN = dict(mean=[0.0] * 3, std=[1.0] * 3)  # normalised value = pixel / 255


def batches(images, labels, **kwargs) -> GPUBatches:
    options = dict(batch_size=32, image_size=images.shape[-1], train=True, **PLAIN) | kwargs
    return GPUBatches(images, labels, **options)


def constant_images(values: torch.Tensor, size: int = 8) -> torch.Tensor:
    return values.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()


def test_batches_have_shapes_dtypes_and_their_own_labels():
    labels = torch.arange(100) % 10
    loader = batches(constant_images(labels * 20), labels, batch_size=32, crop_padding=2, flip=True)
    sizes = []
    for images, batch_labels in loader:
        assert images.dtype == torch.float32 and batch_labels.dtype == torch.int64
        assert images.shape[1:] == (3, 8, 8) and images.is_contiguous()  # NHWC views train 20x slower on CPU
        # a constant image stays constant under crop (reflect padding) and flip: its value is its label
        assert torch.equal((images.mean(dim=(1, 2, 3)) * 255).round().long(), batch_labels * 20)
        sizes.append(len(images))
    assert sizes == [32, 32, 32, 4] and len(loader) == 4


@pytest.mark.parametrize("world_size", [1, 2])
def test_an_epoch_covers_every_sample_once(world_size):
    n = 300
    index = torch.arange(n)
    images = torch.stack([index % 256, index // 256, torch.zeros(n, dtype=torch.long)], 1)
    images = images.to(torch.uint8)[:, :, None, None].expand(-1, -1, 4, 4).contiguous()
    seen = []
    for rank in range(world_size):
        loader = batches(images, index, batch_size=64, rank=rank, world_size=world_size)
        epochs = [torch.cat([labels for _, labels in loader]) for _ in range(2)]
        assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch
        (x, labels), *_ = loader
        assert torch.equal(
            (x[:, 0, 0, 0] * 255).round() + 256 * (x[:, 1, 0, 0] * 255).round(), labels.float()
        )
        seen.append(epochs[0])
        assert len(epochs[0]) == 150 * (2 // world_size)  # equal shares, so DDP ranks step in lockstep
    assert torch.equal(torch.cat(seen).unique(), index)


def test_a_loader_restored_mid_epoch_serves_the_rest_of_that_epoch():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    options = dict(batch_size=16, crop_padding=2, flip=True, cutout=3)
    whole = batches(images, torch.arange(100), **options)
    epoch_0, epoch_1 = list(whole), list(whole)
    interrupted = batches(images, torch.arange(100), **options)
    for _, _ in zip(range(3), interrupted, strict=False):  # three batches, then a checkpoint
        pass
    restored = batches(images, torch.arange(100), **options)
    restored.load_state_dict(interrupted.state_dict())
    for expected, got in zip(epoch_0[3:] + epoch_1, list(restored) + list(restored), strict=True):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])  # augmentations too


def test_flips_half_the_images_and_crops_shift_the_content():
    n, size, pad = 2000, 8, 2
    ramp = torch.arange(size, dtype=torch.uint8) * 30  # dark left, bright right
    images = ramp.expand(n, 3, size, size).contiguous()
    (flipped, _), *_ = batches(images, torch.zeros(n), batch_size=n, flip=True)
    left_brighter = flipped[:, 0, 0, 0] > flipped[:, 0, 0, -1]
    assert 0.45 < left_brighter.float().mean() < 0.55

    dot = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    dot[:, :, 4, 4] = 255
    (cropped, _), *_ = batches(dot, torch.zeros(n), batch_size=n, crop_padding=pad)
    rows, cols = (cropped[:, 0] == 1).nonzero()[:, 1:].unbind(1)
    # the dot lands anywhere within +-pad of where it was (reflection can add a mirrored copy)
    assert set(rows.tolist()) == set(range(4 - pad, 4 + pad + 1)) == set(cols.tolist())


def test_cutout_zeroes_one_square_per_image():
    images = constant_images(torch.full((50,), 200), size=12)
    (x, _), *_ = batches(images, torch.zeros(50), batch_size=50, cutout=5)
    assert ((x == 0).sum(dim=(1, 2, 3)) == 3 * 5 * 5).all()


def test_eval_batches_are_in_order_unaugmented_and_repeatable():
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(70)
    loader = batches(
        images, labels, train=False, crop_padding=2, flip=True, cutout=3, mean=[0.5] * 3, std=[0.25] * 3
    )
    first, second = list(loader), list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    assert torch.equal(torch.cat([y for _, y in first]), labels)
    # torchvision scales by * (1 / 255), not / 255: the last bit may differ
    assert torch.allclose(torch.cat([x for x, _ in first]), (images / 255 - 0.5) / 0.25, atol=1e-6)


DIGITS = dict(data_dir="unused", val_size=180, test_size=360, image_size=16, num_classes=10, batch_size=64)


@pytest.mark.parametrize("train", [True, False])
def test_resizing_the_whole_set_once_gives_the_batches_of_resizing_each_batch(train):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (150, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(150) % 10
    options = dict(image_size=16, train=train, crop_padding=2, interpolation="bicubic", seed=3)
    once, per_batch = (
        batches(images, labels, **options),
        batches(images, labels, **options, resized_cache_bytes=0),
    )
    assert once._resized is not None and per_batch._resized is None
    for _ in range(2):  # two epochs: the cache is reused, not consumed
        for (a, labels_a), (b, labels_b) in zip(once, per_batch, strict=True):
            assert a.shape == (len(a), 3, 16, 16) and torch.equal(labels_a, labels_b)
            assert torch.equal(a, b)


def test_datamodules_choose_the_loader():
    dm = DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, loader="gpu", cutout=4)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train, GPUBatches) and train.train and not train.flip and train.cutout == 4
    assert not val.train and len(val) == 3
    images, _ = next(iter(train))
    assert images.shape == (64, 3, 16, 16)  # digits' 8 px resized, as the torch transforms do

    torch_loader = DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, num_workers=2, prefetch_factor=4)
    torch_loader.setup("fit")
    loader = torch_loader.train_dataloader()
    assert loader.prefetch_factor == 4 and not loader.pin_memory  # pinned only for a GPU


@pytest.mark.parametrize(
    ("augment", "random_erasing", "expected"),
    [(None, 0.0, GPUBatches), ("basic", 0.0, GPUBatches), ("randaugment", 0.0, torch.utils.data.DataLoader),
     ("basic", 0.25, torch.utils.data.DataLoader)],
)  # fmt: skip
def test_loader_auto_batches_in_memory_unless_the_augmentation_runs_per_image(
    augment, random_erasing, expected
):
    policy = augment and {
        **OmegaConf.load(CONF / "augment" / f"{augment}.yaml"),
        "random_erasing": random_erasing,
    }
    dm = DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, loader="auto", augment=policy)
    dm.setup("fit")
    assert isinstance(dm.train_dataloader(), expected) and isinstance(dm.val_dataloader(), expected)


@pytest.mark.parametrize("loader", ["torch", "gpu"])
def test_a_last_training_batch_of_one_image_is_dropped(loader):
    """BatchNorm cannot train on one image: 1 257 training digits at batch 8 would leave one in the last batch."""
    dm = DigitsDataModule(**DIGITS | {"batch_size": 8}, mean=[0.3] * 3, std=[0.4] * 3, loader=loader)
    dm.setup("fit")
    sizes = [len(labels) for _, labels in dm.train_dataloader()]
    assert len(sizes) == len(dm.train_dataloader()) == 157 and set(sizes) == {8}
    assert [len(labels) for _, labels in dm.val_dataloader()][-1] == 180 - 22 * 8  # kept where nothing trains
    dm = DigitsDataModule(**DIGITS | {"batch_size": 10}, mean=[0.3] * 3, std=[0.4] * 3, loader=loader)
    dm.setup("fit")
    assert sum(len(labels) for _, labels in dm.train_dataloader()) == 1257  # any other last batch is kept


@pytest.mark.parametrize(
    ("image_size", "interpolation"), [(32, "bilinear"), (48, "bilinear"), (48, "bicubic")]
)
def test_cifar10_eval_batches_are_the_dataloader_paths_bit_for_bit(image_size, interpolation, fake_cifar10):
    """data.loader=auto puts the GPU-resident loader in the DataLoader's place: evaluation sees the same tensors
    (the same torchvision resize of the uint8 images, scaling and normalisation, on whole batches)."""
    options = dict(data_dir=str(fake_cifar10), val_size=20, image_size=image_size, num_classes=10,
                   mean=[0.5] * 3, std=[0.25] * 3, batch_size=8, download=False, verify_checksums=False,
                   seed=0, interpolation=interpolation)  # fmt: skip
    on_device, plain = (
        CIFAR10DataModule(**options, loader="gpu"),
        CIFAR10DataModule(**options, loader="torch"),
    )
    on_device.setup("fit")
    plain.setup("fit")
    for stage in ("val", "test"):
        for (images, labels), (expected, expected_labels) in zip(
            getattr(on_device, f"{stage}_dataloader")(), getattr(plain, f"{stage}_dataloader")(), strict=True
        ):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_digits_eval_batches_are_the_dataloader_paths_bit_for_bit(interpolation):
    """The quickstart's data: 8 px images resized to 16 once on the GPU-resident path, per image on the other."""
    on_device, plain = (
        DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, interpolation=interpolation, loader=loader)
        for loader in ("gpu", "torch")
    )
    on_device.setup()
    plain.setup()
    for stage in ("val", "test"):
        for (images, labels), (expected, expected_labels) in zip(
            getattr(on_device, f"{stage}_dataloader")(), getattr(plain, f"{stage}_dataloader")(), strict=True
        ):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


def test_digits_training_batches_have_the_dataloader_paths_augmentation_statistics():
    """The GPU loader's batch-wise crop against the DataLoader's per-image v2.RandomCrop: over 2 epochs each
    pixel's mean and spread across the augmented images agree within 0.03 (measured 0.014; a crop padding of
    1 or 3 in place of 2 differs by 0.07-0.11)."""

    def pixel_statistics(loader: str) -> tuple[torch.Tensor, torch.Tensor]:
        dm = DigitsDataModule(**DIGITS, mean=[0.0] * 3, std=[1.0] * 3, loader=loader)
        dm.setup("fit")
        images = torch.cat([x for _ in range(2) for x, _ in dm.train_dataloader()])
        return images.mean(0), images.std(0)

    (mean, spread), (expected_mean, expected_spread) = pixel_statistics("gpu"), pixel_statistics("torch")
    assert (mean - expected_mean).abs().max() < 0.03 and (spread - expected_spread).abs().max() < 0.03
    # and the crop moves the content: an un-augmented pixel mean would differ by far more at the borders
    plain = DigitsDataModule(**DIGITS, mean=[0.0] * 3, std=[1.0] * 3, loader="gpu")
    plain.setup("fit")
    unaugmented = torch.cat([x for x, _ in plain.val_dataloader()]).mean(0)
    assert (unaugmented - expected_mean).abs().max() > 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=flowers102", "data.loader=gpu"], "data.loader=gpu needs .* use data.loader=torch"),
        (["data=digits", "data.loader=gpu", "data.cutout=16"], "data.cutout=16 must be between 0 .off. and data.image_size=16"),
        (["data=digits", "data.loader=torch", "data.cutout=4"], "data.cutout=4 is applied by the GPU-resident loader only: add data.loader=gpu"),
    ],
)  # fmt: skip
def test_gpu_loader_and_cutout_refuse_what_they_cannot_do(
    overrides, message, fake_flowers102, tmp_path, capsys
):
    flowers = [f"data.data_dir={fake_flowers102}", "data.download=false", "data.verify_checksums=false"]
    cfg = compose_config(
        "train", [*overrides, *TINY_VIT, *QUICK, *(flowers if "flowers" in overrides[0] else [])], tmp_path
    )
    with pytest.raises(SystemExit) as exit_info:  # the entry point's `error: ...`, exit code 2
        train(cfg)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_trains_with_the_gpu_resident_loader(tmp_path):
    cfg = compose_config(
        "train",
        ["data=digits", "data.loader=gpu", "data.cutout=4", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=3",
         "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert {"train/loss_epoch", "train/acc", "val/acc", "test/acc"} <= metrics.keys()
