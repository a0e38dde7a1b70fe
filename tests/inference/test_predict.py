"""src.predict on generated PNG/JPEG files and a broken one: the checkpoint alone gives the same
probabilities as the test pipeline, unreadable files are skipped and counted."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from src.inference.files import load_image
from src.predict import predict
from src.training.module import ClassifierModule
from tests.conftest import compose_config, run_cli


@pytest.fixture(scope="module")
def checkpoint(tiny_sweep) -> Path:
    return Path(json.loads((tiny_sweep / "0" / "summary.json").read_text())["best_checkpoint"])


@pytest.fixture(scope="module")
def inputs(checkpoint, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """Three digits test images as PNG (exactly the DataModule's pixels), a larger JPEG photo, a broken file;
    and the probabilities the model gives the three digits through the DataModule's test set."""
    folder = tmp_path_factory.mktemp("inputs")
    model = ClassifierModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = instantiate(model.hparams.data)
    datamodule.setup("test")
    test = datamodule.data_test
    for i in range(3):
        pixels, _ = test.dataset[test.indices[i]]  # uint8 (3, 8, 8)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"digit_{i}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    (folder / "broken.jpg").write_text("not an image")
    with torch.inference_mode():
        expected = model(torch.stack([test[i][0] for i in range(3)])).softmax(dim=-1)
    return folder, expected


def test_predict_cli_on_a_folder(checkpoint, inputs, tmp_path):
    folder, expected = inputs
    result = run_cli(
        "src.predict", f"ckpt_path={checkpoint}", f"inputs={folder}", "topk=3", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("skipped") == 2 and "broken.jpg: not a readable image" in output  # warning + count
    assert "4 images classified, 1 files skipped" in output
    assert "Top-3 predictions" in result.stdout and "digit_0.png" in result.stdout

    (csv_path,) = (tmp_path / "predict" / "runs").glob("*/predictions.csv")
    with open(csv_path, newline="") as f:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(f)}
    assert list(rows) == ["digit_0.png", "digit_1.png", "digit_2.png", "photo.jpg"]
    assert list(rows["photo.jpg"]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    for i in range(3):
        row = rows[f"digit_{i}.png"]
        probs, classes = expected[i].topk(3)
        assert [row[f"class_{r}"] for r in (1, 2, 3)] == [str(c) for c in classes.tolist()]
        assert [float(row[f"prob_{r}"]) for r in (1, 2, 3)] == pytest.approx(probs.tolist(), abs=1e-5)
    photo = [float(rows["photo.jpg"][f"prob_{r}"]) for r in (1, 2, 3)]
    assert photo == sorted(photo, reverse=True) and 0 < sum(photo) <= 1 + 1e-6


def test_predict_on_a_glob_with_topk_beyond_the_classes(checkpoint, inputs, tmp_path):
    folder, _ = inputs
    cfg = compose_config(
        "predict", [f"ckpt_path={checkpoint}", f"inputs={folder}/*.png", "topk=50"], tmp_path
    )
    rows = predict(cfg)
    assert [file.name for file, _ in rows] == ["digit_0.png", "digit_1.png", "digit_2.png"]
    assert all(len(top) == 10 for _, top in rows)  # every class, most probable first
    assert sum(p for _, p in rows[0][1]) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "predictions.csv").is_file()


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{folder}/nothing/*.png", "no files found"),
        ("{folder}/broken.jpg", "none of the 1"),
        ("", "inputs is empty"),
    ],
)
def test_predict_without_readable_images_says_so(checkpoint, inputs, tmp_path, capsys, pattern, message):
    folder, _ = inputs
    cfg = compose_config(
        "predict", [f"ckpt_path={checkpoint}", f"inputs={pattern.format(folder=folder)}"], tmp_path
    )
    with pytest.raises(SystemExit) as exit_info:
        predict(cfg)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inputs={folder}"], "ckpt_path is missing: python -m src.predict ckpt_path=<file.ckpt>"),
        (["ckpt_path={ckpt}"], "inputs is missing"),
        (["ckpt_path={folder}/digit_0.png", "inputs={folder}"], "digit_0.png is not a checkpoint written by src.train"),
        (["ckpt_path={ckpt}", "inputs={folder}", "topk=0"], "topk=0 must be a whole number of at least 1"),
        (["ckpt_path={ckpt}", "inputs={folder}", "batch_size=0"], "batch_size=0 must be a whole number"),
        (["ckpt_path={ckpt}", "inputs={folder}", "device=foo"], "device=foo is not a device: use device=cpu"),
    ],
)  # fmt: skip
def test_predict_mistakes_get_one_error_line(checkpoint, inputs, tmp_path, capsys, overrides, message):
    folder, _ = inputs
    cfg = compose_config("predict", [o.format(folder=folder, ckpt=checkpoint) for o in overrides], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        predict(cfg)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_predict_follows_links_and_reads_16_bit_images(checkpoint, inputs, tmp_path):
    folder, _ = inputs
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "linked.png").symlink_to(folder / "digit_0.png")  # stores such as DVC's link files
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63 000 of 65 535
    Image.fromarray(ramp).save(tmp_path / "links" / "deep.png")
    assert Image.open(tmp_path / "links" / "deep.png").mode.startswith("I")
    grey = np.asarray(load_image(tmp_path / "links" / "deep.png"))[..., 0].astype(float)
    assert np.allclose(grey, ramp / 257, atol=1)  # scaled to 8 bits, not clipped at 255
    cfg = compose_config("predict", [f"ckpt_path={checkpoint}", f"inputs={tmp_path / 'links'}"], tmp_path)
    rows = predict(cfg)
    assert sorted(file.name for file, _ in rows) == ["deep.png", "linked.png"]
