"""The report files every run leaves: numbers equal scikit-learn's, every artefact exists and parses after a
real (tiny) run, TensorBoard gets the report and confusion matrix, and src.eval reproduces train's results."""

import csv
import io
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.metrics import classification_report
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.reporting import artefacts
from tests.conftest import QUICK, TINY_VIT, run_cli, run_dirs

NAMES = ["airplane", "automobile", "bird", "cat"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 2]  # "cat" never occurs in the test set
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 3, 2, 0, 2, 2]


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["class"]: row for row in csv.DictReader(f)}


def test_report_numbers_equal_scikit_learn(tmp_path):
    expected = classification_report(
        Y_TRUE, Y_PRED, labels=range(4), target_names=NAMES, output_dict=True, zero_division=0
    )
    report = artefacts.classification_rows(np.array(Y_TRUE), np.array(Y_PRED), NAMES)
    markdown = artefacts.write_report(report, tmp_path)
    rows = read_csv(tmp_path / "report.csv")

    # the CIFAR-10 notebook's layout: the classes in order, then accuracy, macro avg, weighted avg
    assert list(rows) == [*NAMES, "accuracy", "macro avg", "weighted avg"]
    for name in [*NAMES, "macro avg", "weighted avg"]:
        for column in ("precision", "recall", "f1-score"):
            assert float(rows[name][column]) == pytest.approx(expected[name][column])
        assert int(rows[name]["support"]) == expected[name]["support"]
    assert float(rows["accuracy"]["f1-score"]) == pytest.approx(expected["accuracy"]) == pytest.approx(8 / 12)
    assert int(rows["accuracy"]["support"]) == 12
    assert rows["cat"]["support"] == "0" and rows["cat"]["precision"] == "0.0"  # predicted once, never right
    assert "| automobile | 0.6667 | 0.6667 | 0.6667 | 3 |" in markdown
    assert "| accuracy |  |  | 0.6667 | 12 |" in markdown
    assert (tmp_path / "report.md").read_text() == markdown


def test_misclassified_grid_shows_unnormalised_images(tmp_path):
    """The grid un-normalises with the data set's mean/std: a mid-grey image comes back mid-grey."""
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    grey = torch.full((1, 3, 8, 8), 0.5)
    normalised = (grey - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    fig = artefacts.plot_misclassified(normalised, [0], [1], [0.9], NAMES, mean, std, tmp_path / "m.png")
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown, 0.5, atol=1e-6)
    assert fig.axes[0].get_title() == "true: airplane\npred: automobile (90%)"


@pytest.fixture(scope="module")
def run_dir(tiny_sweep) -> Path:
    return tiny_sweep / "0"


def test_every_artefact_exists_and_parses(run_dir):
    rows = read_csv(run_dir / "report.csv")
    assert list(rows)[:10] == [str(d) for d in range(10)]  # the digits' class names
    assert sum(int(rows[str(d)]["support"]) for d in range(10)) == int(rows["accuracy"]["support"]) == 360
    report_md = (run_dir / "report.md").read_text()
    assert report_md.count("\n") == 2 + 13 and "| weighted avg |" in report_md

    summary = json.loads((run_dir / "summary.json").read_text())
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    # the report and test/acc come from the same predictions
    assert summary["test"]["test/acc"] == pytest.approx(events.Scalars("test/acc")[-1].value, abs=1e-6)
    assert summary["test"]["test/acc"] == pytest.approx(float(rows["accuracy"]["f1-score"]), abs=1e-6)
    assert summary["test"]["test/macro_f1"] == pytest.approx(float(rows["macro avg"]["f1-score"]))
    assert (summary["model"], summary["data"], summary["num_classes"]) == ("vit", "digits", 10)
    assert summary["params_total"] == summary["params_trainable"] > 0
    assert summary["seconds_per_epoch"] > 0 and summary["test_seconds"] > 0
    assert summary["images_per_second"] == pytest.approx(360 / summary["test_seconds"])
    assert summary["peak_memory_of"] == "process_rss" and summary["peak_memory_mib"] > 100
    assert Path(summary["best_checkpoint"]).is_file()
    assert Path(summary["best_checkpoint"]).parent == run_dir / "checkpoints"

    for name in ("confusion_matrix", "curves", "misclassified", "attention"):
        image = matplotlib.image.imread(run_dir / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 200, name

    # TensorBoard: the report as text, the confusion matrix as an image
    for name in ("confusion_matrix", "attention"):  # the pictures of the PNG files
        (logged,) = events.Images(f"test/{name}")
        decoded = matplotlib.image.imread(io.BytesIO(logged.encoded_image_string))
        assert np.array_equal(decoded[..., :3], matplotlib.image.imread(run_dir / f"{name}.png")[..., :3]), (
            name
        )
    assert any(tag.startswith("test/classification_report") for tag in events.Tags()["tensors"])


def test_checkpoints_carry_the_class_names_and_curves(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["class_names"] == [str(d) for d in range(10)]
    (state,) = (v for k, v in ckpt["callbacks"].items() if "ReportCallback" in k)
    # every epoch up to the checkpoint's (Lightning 2.6 rewrites last.ckpt only when val/acc improved)
    assert [row["epoch"] for row in state["history"]] == list(range(ckpt["epoch"] + 1))
    assert {"val/loss", "val/acc"} <= set(state["history"][-1])
    assert state["choices"] == {"model": "vit", "data": "digits", "freeze": "none"}


@pytest.mark.slow
def test_eval_reproduces_the_training_runs_report(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    result = run_cli("src.eval", f"ckpt_path={summary['best_checkpoint']}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = run_dirs(tmp_path, "eval")
    eval_summary = json.loads((eval_dir / "summary.json").read_text())
    assert eval_summary["test"]["test/acc"] == pytest.approx(summary["test"]["test/acc"], abs=1e-6)
    assert (eval_dir / "report.csv").read_text() == (run_dir / "report.csv").read_text()
    assert (eval_summary["model"], eval_summary["data"]) == ("vit", "digits")  # from the checkpoint
    assert eval_summary["tested_checkpoint"] == summary["best_checkpoint"]
    assert eval_summary["best_checkpoint"] is None  # eval saves none (it used to show the run's last.ckpt)
    for name in ("report.md", "confusion_matrix.png", "curves.png", "misclassified.png"):
        assert (eval_dir / name).is_file(), name
    assert "Classification report (test)" in result.stdout


@pytest.mark.slow
def test_ddp_ranks_are_gathered_into_one_report(tmp_path):
    """Two DDP processes on the CPU: each tests half of the 360 digits; rank 0 writes one report over all."""
    result = run_cli(
        "src.train", "data=digits", *TINY_VIT, *QUICK, "trainer.devices=2", "+trainer.strategy=ddp",
        "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2", f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path, "train")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_csv(run_dir / "report.csv")
    assert summary["test_images"] == int(rows["accuracy"]["support"]) == 360
    # the same number as the test/acc that torchmetrics synchronised over the ranks
    assert float(rows["accuracy"]["f1-score"]) == pytest.approx(summary["test"]["test/acc"], abs=1e-6)
    assert result.stdout.count("Classification report (test)") == 1
