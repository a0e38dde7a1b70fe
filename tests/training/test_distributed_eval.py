"""Under DDP, validation and test see each image of their split once, whether or not it divides evenly among the
ranks: DistributedSampler's padding (repeated images) would count some twice in the report and test metrics."""

import json
from types import SimpleNamespace

import pytest
import torch

from src.data.digits import DigitsDataModule
from src.errors import UserError
from tests.conftest import QUICK, TINY_VIT, run_cli, run_dirs

# 65 + 64 images on two ranks: two batches of 64 on one, one on the other
ODD_SPLITS = dict(val_size=129, test_size=129)
DIGITS = dict(data_dir="unused", image_size=16, num_classes=10, batch_size=64, mean=[0.3] * 3, std=[0.4] * 3)


def digits(loader: str) -> DigitsDataModule:
    dm = DigitsDataModule(**DIGITS, **ODD_SPLITS, loader=loader)
    dm.setup("fit")
    return dm


def on_rank(dm: DigitsDataModule, rank: int, world_size: int) -> DigitsDataModule:
    dm.trainer = SimpleNamespace(
        global_rank=rank, world_size=world_size, current_epoch=0,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )  # fmt: skip
    return dm


def split_labels(dm: DigitsDataModule, split: str) -> torch.Tensor:
    subset = getattr(dm, f"data_{split}")
    return subset.dataset.tensors[1][subset.indices]


@pytest.mark.parametrize("loader", ["torch", "gpu"])
def test_each_rank_evaluates_its_own_part_of_a_split_and_no_image_twice(loader):
    dm = digits(loader)
    for split in ("val", "test"):
        labels = []
        for rank in (0, 1):
            batches = getattr(on_rank(dm, rank, world_size=2), f"{split}_dataloader")()
            labels.append(torch.cat([batch_labels for _, batch_labels in batches]))
        expected = split_labels(dm, split)
        assert [len(part) for part in labels] == [(len(expected) + 1) // 2, len(expected) // 2]
        assert torch.equal(torch.cat(labels).bincount(), expected.bincount())


@pytest.mark.parametrize("loader", ["torch", "gpu"])
def test_a_split_smaller_than_the_number_of_processes_is_a_user_error(loader):
    # one of 130 ranks would have no image of the 129 and wait for the others at the epoch's end
    with pytest.raises(UserError, match="split of 129 images cannot give each of the 130 processes one"):
        on_rank(digits(loader), rank=0, world_size=130).test_dataloader()


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "gpu"])
def test_ddp_report_counts_each_image_of_an_odd_test_split_once(loader, tmp_path):
    result = run_cli(
        "src.train", "data=digits", f"data.loader={loader}", "data.val_size=129", "data.test_size=129",
        "trainer=ddp", "trainer.devices=2", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=2",
        f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path, "train")
    assert json.loads((run_dir / "summary.json").read_text())["test_images"] == 129
    # per class too: the supports of the report are the test split's class counts
    rows = [line.split(",") for line in (run_dir / "report.csv").read_text().splitlines()[1:]]
    supports = {row[0]: int(row[-1]) for row in rows}
    expected = split_labels(digits(loader), "test").bincount().tolist()
    assert [supports[str(digit)] for digit in range(10)] == expected and supports["accuracy"] == 129
