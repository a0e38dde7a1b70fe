"""data=hf on Hugging Face data sets the tests write in the formats the Hub serves: a `save_to_disk` folder and
parquet files, with ClassLabel and string labels, a corrupt image, missing splits and the errors a user can fix."""

import csv
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from src.data.hf import HFDataModule
from src.errors import UserError
from tests.conftest import QUICK, TINY_VIT, run_cli, run_dirs

datasets = pytest.importorskip("datasets")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SETTINGS = dict(
    image_size=16, mean=[0.5] * 3, std=[0.25] * 3, batch_size=16, seed=0, val_size=0.1, test_size=0.1,
    num_classes=10, num_workers=0, style="digits",
)  # fmt: skip


def digit_images(indices) -> tuple[list[Image.Image], list[int]]:
    digits = load_digits()
    images = [Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)) for i in indices]
    return images, [int(digits.target[i]) for i in indices]


def digits_dataset(indices, label_feature=None):
    images, labels = digit_images(indices)
    label_feature = label_feature or datasets.ClassLabel(names=NAMES)
    if isinstance(label_feature, datasets.Value):
        labels = [NAMES[label] for label in labels]
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def saved_digits(tmp_path_factory):
    """scikit-learn's digits as a DatasetDict on disk (save_to_disk): train (1 437 images, one of them a corrupt
    PNG) and test (360); no validation split."""
    folder = tmp_path_factory.mktemp("hf") / "digits"
    train = digits_dataset(range(1437)).cast_column("image", datasets.Image(decode=False))
    rows = train.to_dict()
    rows["image"][5] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}
    train = datasets.Dataset.from_dict(rows, features=train.features)
    datasets.DatasetDict(train=train, test=digits_dataset(range(1437, 1797))).save_to_disk(str(folder))
    return folder


def module(name, **settings) -> HFDataModule:
    return HFDataModule(name=str(name), **(SETTINGS | settings))


def test_a_saved_data_set_gives_class_names_carves_val_and_skips_a_corrupt_image(saved_digits, caplog):
    data = module(saved_digits)
    with caplog.at_level(logging.WARNING):
        data.setup()
    assert data.class_names == NAMES
    assert "skipped 1 of the 1797 files" in caplog.text and "train/5" in caplog.text
    # test is the data set's own split, val is carved off train (10 %, stratified)
    assert len(data.data_test) == 360 and len(data.data_val) == 144 and len(data.data_train) == 1436 - 144
    assert all(count in (14, 15) for count in data.split_counts["val"].values())
    image, label = data.data_test[0]
    assert image.shape == (3, 16, 16) and label == load_digits().target[1437]
    # every image read is its row's, with its row's label: train row r is digit r of scikit-learn's set, test row
    # r digit 1437 + r
    rows, digits = data.data_train.dataset, load_digits()
    for split in ("train", "val", "test"):
        for i in getattr(data, f"data_{split}").indices[::25]:
            image, label = rows[i]
            digit = rows.row_of[i] + (1437 if rows.split_names[rows.split_of[i]] == "test" else 0)
            assert label == digits.target[digit]
            assert np.array_equal(
                np.asarray(image.convert("L")), (digits.images[digit] * 255 / 16).astype(np.uint8)
            )


def test_parquet_files_with_string_labels_and_a_named_validation_split(tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    for split, indices in (
        ("train", range(0, 600)),
        ("validation", range(600, 700)),
        ("test", range(700, 800)),
    ):
        digits_dataset(indices, datasets.Value("string")).to_parquet(str(folder / f"{split}-00000.parquet"))
    data = module(folder)
    data.setup()
    assert data.class_names == sorted(NAMES)  # string labels: sorted, as a CSV's
    assert (len(data.data_train), len(data.data_val), len(data.data_test)) == (600, 100, 100)
    _, label = data.data_val[0]
    assert data.class_names[label] == NAMES[load_digits().target[600]]


def test_bad_columns_splits_and_offline_hub_names_are_user_errors(saved_digits, monkeypatch):
    with pytest.raises(UserError, match=r"no column 'digit' \(its columns: image, label\): name it with "
                       r"data.label_column=<column>"):  # fmt: skip
        module(saved_digits, label_column="digit").setup()
    with pytest.raises(UserError, match=r"data.splits.val=valid is not a split of the data set \(its splits: "
                       r"train, test\)"):  # fmt: skip
        module(saved_digits, splits={"val": "valid"}).setup()
    with pytest.raises(UserError, match="data.image_column=<column>"):
        module(saved_digits, image_column="label").setup()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="could not be loaded from the Hugging Face Hub .*save_to_disk"):
        module("someone/not-here").setup()


@pytest.mark.slow
def test_train_eval_and_predict_on_a_saved_data_set(saved_digits, tmp_path):
    logs = tmp_path / "logs"
    common = [f"paths.log_dir={logs}", "task_name=hf", "data.style=digits", "data.image_size=16"]
    result = run_cli("src.train", "data=hf", f"data.name={saved_digits}", *TINY_VIT, *QUICK, *common,
                     "+trainer.limit_train_batches=4", "data.batch_size=64")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(logs, "hf")
    summary = json.loads((run_dir / "summary.json").read_text())
    # the report counts by the ClassLabel's names (how well images and labels pair up: the test above)
    nines = int((load_digits().target[1437:] == 9).sum())
    assert (
        summary["class_counts"]["test"]["nine"] == nines and "| nine |" in (run_dir / "report.md").read_text()
    )
    checkpoint = torch.load(summary["best_checkpoint"], weights_only=True)
    assert checkpoint["class_names"] == NAMES
    result = run_cli("src.eval", f"ckpt_path={summary['best_checkpoint']}", f"paths.log_dir={logs}",
                     "~callbacks.rich_progress_bar")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluated,) = logs.glob("eval/**/summary.json")
    assert json.loads(evaluated.read_text())["test_images"] == 360
    images, _ = digit_images([1437, 1438])
    for i, image in enumerate(images):
        image.resize((16, 16)).save(tmp_path / f"{i}.png")
    result = run_cli("src.predict", f"ckpt_path={summary['best_checkpoint']}", f"inputs={tmp_path}",
                     f"paths.log_dir={logs}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (predictions,) = logs.glob("predict/**/predictions.csv")
    assert {row["class_1"] for row in csv.DictReader(predictions.open())} <= set(NAMES)
    offline = run_cli("src.train", "data=hf", "data.name=someone/not-here", *TINY_VIT, *QUICK, *common,
                      env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert offline.returncode == 2 and offline.stderr.count("error:") == 1, offline.stderr[-2000:]
    assert "error: data.name=someone/not-here is no folder here" in offline.stderr


def test_an_imagefolder_builder_folder_reads_as_image_folders_do(digits_png, tmp_path):
    """The docs' command: datasets' imagefolder builder on `make digits-images`' folder gives the classes, the
    counted num_classes and the split sizes that data=imagefolder gives on it."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    folder = digits_png / "digits_png"
    cfg = compose_config("train", ["data=hf", f"data.name={folder}"], tmp_path)
    assert OmegaConf.select(cfg, "data.num_classes") == cfg.model.num_classes == 10
    data = module(folder, style="digits", val_size=180, test_size=360)
    data.setup()
    assert data.class_names == [str(n) for n in range(10)]
    assert (len(data.data_train), len(data.data_val), len(data.data_test)) == (1257, 180, 360)
