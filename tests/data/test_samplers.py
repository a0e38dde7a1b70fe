"""data.sampler=repeated: DeiT's repeated augmentation through timm's RepeatAugSampler, built by the DataModule for
its rank and kept by Lightning under DDP (src/data/base.py, src/training/trainer.py)."""

from collections import Counter
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage
from timm.data.distributed_sampler import RepeatAugSampler

from src.data.digits import DigitsDataModule
from src.train import train
from src.training.trainer import build_trainer
from tests.conftest import QUICK, TINY_VIT, compose_config

# 1 797 digits less 500 + 529: 768 training images, three times 256 (timm rounds an epoch to a multiple of 256)
DIGITS = dict(data_dir="unused", image_size=8, num_classes=10, mean=[0.3] * 3, std=[0.4] * 3, batch_size=32,
              val_size=500, test_size=529, seed=0, download=False, verify_checksums=False, loader="torch")  # fmt: skip


def rank_indices(rank: int, epoch: int = 0, repeats: int = 3) -> list[int]:
    """The training indices that rank `rank` of 2 draws in `epoch`, from the DataModule's own training loader."""
    dm = DigitsDataModule(**DIGITS, sampler="repeated", repeats=repeats)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=epoch,
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))  # fmt: skip
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, RepeatAugSampler) and (sampler.num_replicas, sampler.rank) == (2, rank)
    sampler.set_epoch(epoch)  # as Lightning's fit loop does at each epoch's start
    return list(sampler)


@pytest.mark.parametrize("repeats", [3, 2])
def test_across_two_ranks_each_drawn_image_comes_repeats_times_on_both_ranks(repeats):
    first, second = rank_indices(0, repeats=repeats), rank_indices(1, repeats=repeats)
    drawn = Counter(first + second)
    # an epoch keeps its 768 images: 768 / repeats images, each `repeats` times
    assert (
        len(first) == len(second) == 384 and set(drawn.values()) == {repeats} and len(drawn) == 768 // repeats
    )
    assert set(first) == set(second) == set(drawn)  # each image's copies are augmented on both ranks
    assert rank_indices(0, epoch=1, repeats=repeats) != first  # another epoch, other images


def test_lightning_keeps_the_repeated_sampler_under_ddp(tmp_path):
    cfg = compose_config("train", ["data=digits", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                                   "data.sampler=repeated", "logger=none", "callbacks=none"], tmp_path)  # fmt: skip
    trainer = build_trainer(cfg)  # built, not fit: no processes start
    dm = DigitsDataModule(**DIGITS, sampler="repeated")
    dm.trainer = trainer
    dm.setup("fit")
    loader = dm.train_dataloader()
    # what Lightning does to a training loader under DDP; it would wrap any sampler that is no DistributedSampler
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared.sampler is loader.sampler
    default = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert not isinstance(
        default._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING).sampler,
        RepeatAugSampler,
    )  # without the setting, Lightning wraps it: when this fails, the setting can go


def test_a_run_with_repeated_augmentation_trains(tmp_path):
    overrides = ["data=digits", *TINY_VIT, *QUICK, "data.sampler=repeated", "data.repeats=3",
                 "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]  # fmt: skip
    metrics = train(compose_config("train", overrides, tmp_path))
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["data.repeats=0"], "error: data.repeats=0: use a whole number of at least 1"),
        (["data.sampler=weighted"], "error: data.sampler=weighted is unknown: use one of default, repeated"),
        (["data.loader=gpu"], "error: data.sampler=repeated needs a DataLoader: use data.loader=torch"),
    ],
)
def test_a_bad_repeated_sampler_setting_is_one_error_line(tmp_path, capsys, overrides, error):
    with pytest.raises(SystemExit) as exit_:
        train(
            compose_config(
                "train", ["data=digits", *TINY_VIT, *QUICK, "data.sampler=repeated", *overrides], tmp_path
            )
        )
    assert exit_.value.code == 2 and error in capsys.readouterr().err
