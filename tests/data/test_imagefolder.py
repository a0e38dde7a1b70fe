"""data=imagefolder and data=csv on generated files: both folder layouts, the CSV manifest, every kind of file
a real folder holds (grey, RGBA, palette, 16-bit, EXIF-rotated, truncated, not an image, hidden), splits,
class imbalance (class weights, the balanced sampler) and the errors a user can fix."""

import csv
import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from PIL import Image

from src.data.files import open_image
from src.data.imagefolder import SPLITS, EpochSeededSampler, ImageFolderDataModule
from src.data.manifest import CSVDataModule
from src.errors import UserError
from src.eval import checkpoint_data_overrides, data_config
from src.training.module import ClassifierModule
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli, run_dirs

SETTINGS = dict(
    image_size=16, mean=[0.5] * 3, std=[0.25] * 3, batch_size=8, seed=0, val_size=0.2, test_size=0.2
)


def write_images(folder: Path, n: int, start: int = 0, size: int = 12) -> list[Path]:
    """`n` RGB PNGs of random noise in `folder` (a class folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + n):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 255, (size, size + 2, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def write_odd_files(folder: Path) -> dict[str, Path]:
    """One file of each kind a real photo folder holds; the last four cannot be trained on."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8)
    files = {name: folder / name for name in (
        "grey.png", "rgba.png", "palette.gif", "grey16.tif", "rotated.jpg", "photo.JPEG", "scan.bmp",
        "image.webp", "truncated.jpg", "text.jpg", ".hidden.png", "notes.txt",
    )}  # fmt: skip
    Image.fromarray(pixels[..., 0]).save(files["grey.png"])
    Image.fromarray(pixels).convert("RGBA").save(files["rgba.png"])
    Image.fromarray(pixels).convert("P").save(files["palette.gif"])
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(files["grey16.tif"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: to be turned 90 degrees when read
    Image.fromarray(pixels).save(files["rotated.jpg"], exif=exif)
    Image.fromarray(pixels).save(files["photo.JPEG"], format="JPEG")
    Image.fromarray(pixels).save(files["scan.bmp"])
    Image.fromarray(pixels).save(files["image.webp"])
    whole = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(whole).save(files["truncated.jpg"], quality=95)
    data = files["truncated.jpg"].read_bytes()
    files["truncated.jpg"].write_bytes(data[: len(data) // 2])  # headers whole, half the pixels
    files["text.jpg"].write_text("not an image")
    Image.fromarray(pixels).save(files[".hidden.png"])
    files["notes.txt"].write_text("labels are folder names")
    return files


def folder_module(data_dir: Path, **settings) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(data_dir=str(data_dir), num_classes=settings.pop("num_classes", 3),
                               **{**SETTINGS, **settings})  # fmt: skip
    dm.setup("fit")
    return dm


def test_class_folders_read_every_image_kind_and_skip_bad_files_with_one_warning(tmp_path, caplog):
    for name in ("cat", "dog"):
        write_images(tmp_path / name, 10)
    odd = write_odd_files(tmp_path / "bird")
    with caplog.at_level(logging.WARNING):
        dm = folder_module(tmp_path)
    assert dm.class_names == ["bird", "cat", "dog"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"skipped 4 of the 32 files in {tmp_path}")
    for name in ("truncated.jpg", "text.jpg", ".hidden.png", "notes.txt"):
        assert name in warnings[0]
    # the 8 readable bird images, every mode, are RGB tensors of the model's size in some split
    counts = {split: c["bird"] for split, c in dm.split_counts.items()}
    assert sum(counts.values()) == 8 and sum(sum(c.values()) for c in dm.split_counts.values()) == 28
    for split in ("train", "val", "test"):
        dataset = getattr(dm, f"data_{split}")
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= label < 3
    assert open_image(odd["rotated.jpg"]).size == (10, 20)  # EXIF applied: 20 x 10 stored, upright 10 x 20
    assert open_image(odd["grey16.tif"]).getpixel((0, 0))[0] == np.asarray(Image.open(odd["grey.png"]))[0, 0]


def test_split_folders_keep_class_order_and_carve_a_missing_split(tmp_path):
    for name in ("b", "a", "c"):
        write_images(tmp_path / "train" / name, 10)
        write_images(tmp_path / "test" / name, 3, start=50)
    dm = folder_module(tmp_path, val_size=6)
    assert dm.class_names == ["a", "b", "c"]  # sorted, the same in every split
    assert dm.split_counts["test"] == {"a": 3, "b": 3, "c": 3}  # the folder, as it is
    assert dm.split_counts["val"] == {"a": 2, "b": 2, "c": 2}  # 6 images off train/, stratified
    assert dm.split_counts["train"] == {"a": 8, "b": 8, "c": 8}
    test_files = {Path(dm.data_test.dataset.files[i]).parent.parent.name for i in dm.data_test.indices}
    assert test_files == {"test"}
    assert [dm.class_names[t] for t in dm.data_test.dataset.targets[dm.data_test.indices]][:3] == ["a"] * 3


def test_linked_folders_and_files_are_read_once_each_in_one_split_and_loops_are_named(tmp_path, caplog):
    for name in ("cat", "dog"):
        write_images(tmp_path / name, 10)
    (tmp_path / "cat" / "self").symlink_to(".")  # a loop: cat/self/self/... once gave 410 images
    (tmp_path / "cat" / "up").symlink_to("..")  # the whole data set again, labelled cat
    (tmp_path / "dog" / "again.png").symlink_to(tmp_path / "dog" / "000.png")
    (tmp_path / "dog" / "hard.png").hardlink_to(tmp_path / "dog" / "001.png")
    with caplog.at_level(logging.WARNING):
        dm = folder_module(tmp_path, num_classes=2)
    assert {split: counts for split, counts in dm.split_counts.items()} == {
        "train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 2, "dog": 2}
    }  # fmt: skip
    files = dm.data_train.dataset.files
    in_splits = [
        str(Path(files[i]).resolve())
        for split in ("train", "val", "test")
        for i in getattr(dm, f"data_{split}").indices
    ]
    assert len(in_splits) == len(set(in_splits)) == 20, "each file on disk once, in one split"
    labels = {Path(files[i]).parent.name for i in range(len(files)) if dm.data_train.dataset.targets[i] == 0}
    assert labels == {"cat"}, "no dog image labelled cat through cat/up"
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert (
        f"{tmp_path / 'cat' / 'self'} -> {tmp_path / 'cat'}" in warnings
        and str(tmp_path / "cat" / "up") in warnings
    )
    assert "again.png (the same file as another" in warnings and "hard.png" in warnings


@pytest.mark.parametrize("val_size, test_size, expected", [(0.1, 0.2, (70, 10, 20)), (5, 15, (80, 5, 15))])
def test_splits_by_fraction_or_count_are_stratified_and_seeded(tmp_path, val_size, test_size, expected):
    write_images(tmp_path / "many", 80)
    write_images(tmp_path / "few", 20)
    dm = folder_module(tmp_path, num_classes=2, val_size=val_size, test_size=test_size)
    assert tuple(sum(dm.split_counts[s].values()) for s in ("train", "val", "test")) == expected
    for split, n in zip(("train", "val", "test"), expected, strict=True):
        assert dm.split_counts[split]["many"] == pytest.approx(0.8 * n, abs=1)  # 80 % in every split
    again = folder_module(tmp_path, num_classes=2, val_size=val_size, test_size=test_size)
    assert list(again.data_test.indices) == list(dm.data_test.indices)
    other = folder_module(tmp_path, num_classes=2, val_size=val_size, test_size=test_size, seed=1)
    assert list(other.data_test.indices) != list(dm.data_test.indices)


def write_manifest(path: Path, rows: list[tuple], header=("path", "label", "split")) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_csv_manifest_with_integer_labels_split_column_and_image_root(tmp_path):
    images = tmp_path / "images"
    files = {label: write_images(images / f"c{label}", 6, start=10 * label) for label in (2, 10)}
    rows = [(str(p.relative_to(images)), label, "test" if i < 2 else "") for label, paths in files.items()
            for i, p in enumerate(paths)]  # fmt: skip
    rows.append(("c2/missing.png", 2, ""))
    manifest = write_manifest(tmp_path / "labels.csv", rows)
    dm = CSVDataModule(
        csv_path=str(manifest), image_root=str(images), num_classes=2, **{**SETTINGS, "val_size": 2}
    )
    dm.setup("fit")
    assert dm.class_names == ["2", "10"]  # numerically sorted
    assert dm.split_counts == {
        "train": {"2": 3, "10": 3},
        "val": {"2": 1, "10": 1},
        "test": {"2": 2, "10": 2},
    }
    image, label = dm.data_test[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_unknown_style_or_sampler_is_a_user_error(tmp_path):
    write_images(tmp_path / "a", 5)
    write_images(tmp_path / "b", 5)
    with pytest.raises(UserError, match="data.style=photo: unknown augmentation style 'photo'"):
        folder_module(tmp_path, num_classes=2, style="photo")
    with pytest.raises(
        UserError, match="data.sampler=weighted is unknown: use one of default, repeated, balanced"
    ):
        folder_module(tmp_path, num_classes=2, sampler="weighted")


def test_csv_errors_name_the_column_and_the_line(tmp_path):
    write_images(tmp_path / "x", 2)
    manifest = write_manifest(tmp_path / "l.csv", [("x/000.png", "x", "training")])
    with pytest.raises(UserError, match=r"l.csv, line 2: split 'training' is not train, val or test"):
        CSVDataModule(csv_path=str(manifest), num_classes=1, **SETTINGS).setup()
    with pytest.raises(
        UserError, match=r"has no column 'file' \(its columns: path, label, split\): name the path"
    ):
        CSVDataModule(csv_path=str(manifest), path_column="file", num_classes=1, **SETTINGS).setup()


@pytest.mark.parametrize(("row", "fields"), [("x/001.png,x", 2), ("x/001,2.png,x,train", 4)])
def test_a_csv_row_with_too_few_or_too_many_fields_is_named_by_its_line(row, fields, tmp_path):
    write_images(tmp_path / "x", 3)
    manifest = write_manifest(tmp_path / "l.csv", [("x/000.png", "x", "train")])
    manifest.write_text(manifest.read_text() + row + "\n")
    with pytest.raises(
        UserError, match=rf"l.csv, line 3: {fields} fields where the header has 3: quote a value"
    ):
        CSVDataModule(csv_path=str(manifest), num_classes=1, **SETTINGS).setup()


def test_a_file_listed_twice_in_a_csv_is_read_once_and_in_two_classes_is_refused(tmp_path, caplog):
    files = write_images(tmp_path / "x", 10) + write_images(tmp_path / "y", 10)
    rows = [(str(f.relative_to(tmp_path)), f.parent.name, "") for f in files]
    manifest = write_manifest(tmp_path / "l.csv", rows + rows[:4])  # 4 rows again
    with caplog.at_level(logging.WARNING):
        dm = CSVDataModule(csv_path=str(manifest), num_classes=2, **SETTINGS)
        dm.setup()
    in_splits = [dm.data_train.dataset.files[i] for s in SPLITS for i in getattr(dm, f"data_{s}").indices]
    assert sorted(in_splits) == sorted(map(str, files)), "each file once, in one split"
    assert "listed again: line 22 repeats line 2" in caplog.text
    write_manifest(tmp_path / "l.csv", [*rows, (rows[0][0], "y", "")])
    with pytest.raises(
        UserError, match=r"l.csv, lines 2 and 22 list the same file .*x/000.png with another label"
    ):
        CSVDataModule(csv_path=str(manifest), num_classes=2, **SETTINGS).setup()


def test_class_weights_are_the_inverse_class_frequencies(tmp_path):
    cfg = compose_config("train", ["data=digits", *TINY_VIT, "module.class_weights=balanced"], tmp_path)
    module = ClassifierModule(**{k: v for k, v in cfg.module.items() if k not in ("_target_", "_recursive_")})
    counts = {str(c): n for c, n in enumerate([30, 10, 60, 100, 100, 100, 100, 100, 100, 100])}
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(split_counts={"train": counts}))
    module.setup("fit")
    total, weights = sum(counts.values()), module.criterion.weight
    assert weights.tolist() == pytest.approx([total / (10 * n) for n in counts.values()])
    assert weights[1] == pytest.approx(10 * weights[4]) and "criterion.weight" not in module.state_dict()


def test_balanced_sampler_draws_classes_equally_and_ranks_share_one_draw(tmp_path):
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    weights = 1.0 / np.bincount(labels)[labels]
    sampler = EpochSeededSampler(weights, len(labels), seed=0, epoch_of=lambda: 0)
    drawn = Counter(labels[list(sampler)].tolist())
    assert all(abs(drawn[c] - 1000 / 3) < 60 for c in range(3)), drawn  # ~333 each; 3 sigma is ~45
    assert list(sampler) == list(sampler)  # a function of (seed, epoch): every DDP rank draws the same
    epoch = [1]
    later = EpochSeededSampler(weights, len(labels), seed=0, epoch_of=lambda: epoch[0])
    assert list(later) != list(sampler)
    # Lightning's wrapper under DDP: two ranks get disjoint halves of the one draw
    ranks = [list(DistributedSamplerWrapper(later, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(later)


def write_case(root: Path, case: str) -> Path:
    """A data folder with one problem a user can fix; returns the data.data_dir to pass."""
    if case == "missing in val":
        for name in ("a", "b"):
            write_images(root / "train" / name, 4)
        write_images(root / "val" / "a", 2)
    elif case == "no images":
        (root / "a").mkdir(parents=True)
        (root / "a" / "broken.png").write_text("x")
        (root / "a" / "readme.md").write_text("x")
    elif case != "no folder":
        write_images(root / "full", 10)
        (root / "empty").mkdir() if case == "empty class" else write_images(root / "single", 1)
    return root / "nowhere" if case == "no folder" else root


@pytest.mark.parametrize("case, message", [
    ("empty class", "class folder {root}/empty has no readable images: add images, or remove the class"),
    ("one image", "class {root}/single has 1 image(s): splitting off test and val (stratified) needs at least 3 "
                  "per class"),
    ("no images", "no readable images among the 2 files found: put images"),
    ("no folder", "data.data_dir={root}/nowhere is not a folder"),
    ("missing in val", "the class folders of {root}/val differ from those of {root}/train: missing b"),
])  # fmt: skip
def test_data_errors_name_the_folder_and_the_fix(tmp_path, case, message):
    data_dir = write_case(tmp_path, case)
    with pytest.raises(UserError) as error:
        folder_module(data_dir, num_classes=2)
    assert str(error.value).startswith(message.format(root=tmp_path))


@pytest.mark.slow
def test_a_data_error_is_one_line_with_exit_code_2(tmp_path):
    data_dir = write_case(tmp_path / "data", "one image")
    result = run_cli("src.train", "data=imagefolder", f"data.data_dir={data_dir}", *TINY_VIT, *QUICK,
                     f"paths.log_dir={tmp_path / 'logs'}", timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: class {data_dir}/single has 1 image(s)" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_num_classes_is_counted_and_shown_by_cfg_job(tmp_path):
    for name in ("x", "y", "z", "w"):
        (tmp_path / name).mkdir()
    result = run_cli(
        "src.train", "data=imagefolder", f"data.data_dir={tmp_path}", "--cfg", "job", "--resolve"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    cfg = yaml.safe_load(result.stdout)
    assert cfg["data"]["num_classes"] == cfg["model"]["num_classes"] == cfg["module"]["num_classes"] == 4


def write_imbalanced(root: Path) -> Path:
    """Three classes of 40 / 16 / 8 images."""
    for name, n, start in (("apple", 40, 0), ("banana", 16, 100), ("cherry", 8, 200)):
        write_images(root / name, n, start=start)
    return root


@pytest.mark.slow
def test_train_eval_predict_and_resume_on_a_folder(tmp_path):
    data_dir, logs = write_imbalanced(tmp_path / "fruit"), tmp_path / "logs"
    common = [f"paths.log_dir={logs}", "task_name=fruit", "data.test_size=16", "data.val_size=8"]
    result = run_cli(
        "src.train", "data=imagefolder", f"data.data_dir={data_dir}", "data.sampler=balanced",
        "module.class_weights=balanced", *TINY_VIT, *QUICK, *common,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(logs, "fruit")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_classes"] == 3 and 0 <= summary["test"]["test/balanced_acc"] <= 1
    assert summary["class_counts"]["test"] == {"apple": 10, "banana": 4, "cherry": 2}
    assert sum(summary["class_counts"]["train"].values()) == 40
    assert "| cherry | 5 | 1 | 2 |" in (run_dir / "report.md").read_text()  # train, val, test
    # resume: the same run dir goes on to epoch 2
    result = run_cli("src.train", "data=imagefolder", f"data.data_dir={data_dir}", *TINY_VIT, *QUICK, *common,
                     "ckpt_path=last", "trainer.max_epochs=2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        run_dirs(logs, "fruit") == [run_dir] or (logs / "fruit" / "checkpoints" / "epoch_001.ckpt").exists()
    )
    last = next(logs.glob("fruit/**/last.ckpt"))
    assert torch.load(last, weights_only=True)["epoch"] == 1
    # predict: the class names (and their order) are the folders'
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["class_names"] == ["apple", "banana", "cherry"]
    result = run_cli("src.predict", f"ckpt_path={last}", f"inputs={data_dir / 'cherry'}", "topk=3",
                     f"paths.log_dir={logs}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (predictions,) = logs.glob("predict/**/predictions.csv")
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == 8 and {r["class_1"] for r in rows} <= {"apple", "banana", "cherry"}
    # eval with the checkpoint's own data config: the same 16 test images
    result = run_cli("src.eval", f"ckpt_path={last}", f"paths.log_dir={logs}", "~callbacks.rich_progress_bar")
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = logs.glob("eval/**/summary.json")
    assert json.loads(summary.read_text())["test_images"] == 16
    # eval on another folder, without data=: its images, prepared by the checkpoint's data config
    other, other_logs = tmp_path / "more_fruit", tmp_path / "other_logs"
    for split, n in (("train", 2), ("val", 1), ("test", 3)):
        for name, start in (("apple", 300), ("banana", 400), ("cherry", 500)):
            write_images(other / split / name, n, start=start)
    result = run_cli("src.eval", f"ckpt_path={last}", f"data.data_dir={other}", "data.num_workers=0",
                     f"paths.log_dir={other_logs}", "~callbacks.rich_progress_bar")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = other_logs.glob("eval/**/summary.json")
    assert json.loads(summary.read_text())["class_counts"]["test"] == {"apple": 3, "banana": 3, "cherry": 3}
    # a folder of other classes: one line, whether their number differs or only their names
    (other / "test" / "cherry").rename(other / "test" / "plum")
    for split in ("train", "val"):
        (other / split / "cherry").rename(other / split / "plum")
    shutil.copytree(other / "test" / "plum", other / "test" / "quince")
    for split in ("train", "val"):
        shutil.copytree(other / split / "plum", other / split / "quince")
    wrong = run_cli("src.eval", f"ckpt_path={last}", f"data.data_dir={other}", f"paths.log_dir={other_logs}")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1] == (
        "error: the checkpoint predicts 3 classes but the data set has 4: evaluate on the data set (data=...) or "
        "folder it was trained on"
    )
    for split in ("train", "val", "test"):
        shutil.rmtree(other / split / "quince")
    wrong = run_cli("src.eval", f"ckpt_path={last}", f"data.data_dir={other}", f"paths.log_dir={other_logs}")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1] == (
        "error: the data's classes (apple, banana, plum) are not the ones the checkpoint was trained on "
        "(apple, banana, cherry): evaluate on data with the same class names"
    )


# a checkpoint's data config, as src.train saves it (hparams.data) for data=imagefolder
TRAINED_ON_A_FOLDER = dict(
    _target_="src.data.imagefolder.ImageFolderDataModule", _convert_="all", data_dir="/trained/on", num_classes=2,
    val_size=2, test_size=2, style="digits", image_size=16, mean=[0.5] * 3, std=[0.25] * 3, seed=7,
    batch_size=8, num_workers=4,
)  # fmt: skip


@pytest.mark.parametrize("choice", [[], ["data=imagefolder"]])
def test_eval_reads_another_folder_as_the_checkpoint_was_trained(choice, tmp_path):
    """src.eval ckpt_path=... data.data_dir=<folder>, with or without data=imagefolder: the other folder's images,
    prepared as the model was trained (its style, size, normalisation and split seed)."""
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    args = checkpoint_data_overrides(
        ["ckpt_path=x.ckpt", *choice, f"data.data_dir={tmp_path}", "data.num_workers=0"]
    )
    cfg = compose_config("eval", args, tmp_path / "logs")
    data = data_config(cfg.get("data"), TRAINED_ON_A_FOLDER)
    kept = {key: TRAINED_ON_A_FOLDER[key] for key in ("style", "image_size", "mean", "std", "seed")}
    assert {key: data[key] for key in kept} == kept
    assert data.data_dir == str(tmp_path) and data.num_workers == 0 and data.num_classes == 2


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_scans_once_and_tests_every_image_once(tmp_path):
    data_dir, logs = write_imbalanced(tmp_path / "fruit"), tmp_path / "logs"
    (data_dir / "cherry" / "broken.jpg").write_text("not an image")
    result = run_cli(
        "src.train", "data=imagefolder", f"data.data_dir={data_dir}", "data.test_size=16", "data.sampler=balanced",
        "trainer=ddp", "trainer.devices=2", *TINY_VIT, *QUICK, f"paths.log_dir={logs}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("skipped 1 of the 65 files") == 1  # one scan, on rank 0
    (run_dir,) = run_dirs(logs, "train")
    supports = [line.rsplit(",", 1)[1] for line in (run_dir / "report.csv").read_text().splitlines()]
    assert supports[1:4] == ["10", "4", "2"] and supports[-1] == "16"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["quickstart_imagefolder", "quickstart_csv"])
def test_quickstart_on_digits_written_as_png_files_reaches_95_percent(tmp_path, experiment):
    """The README's "train on your own images": the quickstart's model and settings, on real image files."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "digits_to_images.py"
    subprocess.run([sys.executable, script, tmp_path / "digits_png"], check=True, capture_output=True)
    assert len(list((tmp_path / "digits_png").glob("*/*.png"))) == 1797
    result = run_cli("src.train", f"experiment={experiment}", f"paths.data_dir={tmp_path}",
                     f"paths.log_dir={tmp_path / 'logs'}", "~callbacks.rich_progress_bar")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "logs", experiment)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_images"] == 360 and sum(summary["class_counts"]["val"].values()) == 180
    assert summary["test"]["test/acc"] >= 0.95, summary["test"]
