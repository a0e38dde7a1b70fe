"""Multi-label runs through vitlab's commands: src.eval tests a multi-label checkpoint with the thresholds it
keeps (or threshold=0.5), and a DDP run's metrics are those of one process on the same checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from src.eval import evaluate
from src.train import train
from src.training import multilabel
from src.training.module import load_checkpoint
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli, run_dirs

# a tiny multi-label run: one training batch, odd val and test splits (65 + 64 on two ranks)
TINY_MULTILABEL = ["data=digits_multilabel", *TINY_VIT, *QUICK, "data.train_images=64", "data.val_images=129",
                   "data.test_images=129", "+trainer.limit_train_batches=1", "logger=none"]  # fmt: skip
# src.eval in this process, on the checkpoint's own data set, without workers or a progress bar
IN_PROCESS = ["trainer.accelerator=cpu", "+data.num_workers=0", "~callbacks.rich_progress_bar"]


@pytest.fixture(scope="module")
def multilabel_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multilabel_run")
    train(compose_config("train", TINY_MULTILABEL, out))
    return Path(json.loads((out / "summary.json").read_text())["best_checkpoint"])


def split_scores(checkpoint: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's probabilities and the labels of one split of its own data set, in this process."""
    from hydra.utils import instantiate

    model = load_checkpoint(checkpoint).eval()
    datamodule = instantiate({**model.hparams.data, "num_workers": 0})
    datamodule.setup("fit" if split == "val" else "test")
    probabilities, targets = [], []
    with torch.no_grad():
        for images, labels in getattr(datamodule, f"{split}_dataloader")():
            probabilities.append(torch.sigmoid(model(images)))
            targets.append(labels)
    return torch.cat(probabilities).numpy(), torch.cat(targets).numpy().astype(int)


def eval_metrics(checkpoint: Path, out: Path, *overrides: str) -> dict[str, float]:
    return evaluate(compose_config("eval", [f"ckpt_path={checkpoint}", *IN_PROCESS, *overrides], out))


def test_eval_tests_a_multilabel_checkpoint_at_its_thresholds_or_at_one(multilabel_checkpoint, tmp_path):
    """`python -m src.eval ckpt_path=<ckpt>` (and `threshold=0.5`, as docs/multilabel.md shows it): the test
    metrics are scikit-learn's of the checkpoint's probabilities, thresholded at its fitted thresholds (or 0.5)."""
    fitted = np.array(torch.load(multilabel_checkpoint, weights_only=True)["thresholds"])
    assert not np.allclose(fitted, 0.5)
    probabilities, targets = split_scores(multilabel_checkpoint, "test")
    for name, overrides, thresholds in (("fitted", [], fitted), ("half", ["threshold=0.5"], 0.5)):
        metrics = eval_metrics(multilabel_checkpoint, tmp_path / name, *overrides)
        predicted = probabilities > thresholds
        assert metrics["test/map"] == pytest.approx(average_precision_score(targets, probabilities), abs=1e-5)
        assert metrics["test/f1"] == pytest.approx(f1_score(targets, predicted, average="macro"), abs=1e-5)
        assert metrics["test/hamming"] == pytest.approx(hamming_loss(targets, predicted), abs=1e-5)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["task"] == "multilabel" and summary["test"]["test/f1"] == pytest.approx(
            metrics["test/f1"]
        )
    # the two thresholds give different label sets here, so the override is seen
    assert f1_score(targets, probabilities > fitted, average="macro") != pytest.approx(
        f1_score(targets, probabilities > 0.5, average="macro")
    )


@pytest.mark.slow
def test_ddp_metrics_are_those_of_one_process_on_the_same_checkpoint(tmp_path):
    """Two gloo processes, each validating and testing its own part of the odd splits (65 and 64 canvases):
    the gathered val/map and fitted thresholds, and every test metric, equal one process's on the same weights."""
    result = run_cli(
        "src.train",
        *TINY_MULTILABEL,
        "trainer=ddp",
        "trainer.devices=2",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "logs", "train")
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = Path(summary["best_checkpoint"])
    # val: the thresholds (fitted to the probabilities gathered from both ranks) and val/map of the kept epoch
    probabilities, targets = split_scores(checkpoint, "val")
    assert len(targets) == 129
    kept = torch.load(checkpoint, weights_only=True)
    assert kept["thresholds"] == pytest.approx(multilabel.fit_thresholds(probabilities, targets), abs=1e-6)
    (state,) = (
        s for k, s in kept["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/map'")
    )
    assert float(state["best_model_score"]) == pytest.approx(
        average_precision_score(targets, probabilities), abs=1e-5
    )
    # test: src.eval in one process on the same checkpoint
    one_process = eval_metrics(checkpoint, tmp_path / "eval")
    tested = {name: value for name, value in summary["test"].items() if name != "test/loss"}
    assert set(tested) >= {
        "test/map",
        "test/map_micro",
        "test/f1",
        "test/exact_match",
        "test/hamming",
        "test/auroc",
    }
    for name, value in tested.items():
        assert value == pytest.approx(one_process[name], abs=1e-5), name
    assert summary["test"]["test/loss"] == pytest.approx(one_process["test/loss"], rel=1e-4)


@pytest.mark.slow
def test_a_users_folder_with_a_csv_beside_it_trains_reports_predicts_and_exports(tmp_path):
    """docs/multilabel.md's own-images commands, in this process: a folder of PNGs and a CSV of `path,label` rows
    (`dog;car`) train a step, the report has a row per label, src.predict lists each image's labels above their
    thresholds, and the ONNX export predicts the same labels."""
    from PIL import Image

    from src.export import export
    from src.predict import predict

    folder = tmp_path / "my_photos"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_sets = ["dog;car", "cat", "dog", "car;cat", "dog;cat;car", "car"]
    rows = ["path,label"]
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            folder / "images" / f"{i}.png"
        )
        rows.append(f"{i}.png,{label_sets[i % len(label_sets)]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")

    run = tmp_path / "run"
    train(compose_config("train", [
        "data=csv", f"data.csv_path={folder / 'labels.csv'}", f"data.image_root={folder / 'images'}",
        "data.label_separator=';'", "data.image_size=32", "data.val_size=6", "data.test_size=6", "data.batch_size=8",
        *TINY_VIT, *QUICK, "+trainer.limit_train_batches=1", "logger=none",
    ], run))  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "multilabel" and list(summary["thresholds"]) == ["car", "cat", "dog"]
    report = (run / "report.md").read_text()
    assert all(f"\n| {name} |" in report for name in ("car", "cat", "dog", "micro avg", "macro avg"))
    checkpoint = summary["best_checkpoint"]

    def labels_of(model_path, out: Path) -> dict[str, list[str]]:
        out.mkdir()
        rows = predict(
            compose_config("predict", [f"ckpt_path={model_path}", f"inputs={folder / 'images'}"], out)
        )
        return {file.name: [name for name, _ in labels] for file, labels in rows}

    from_checkpoint = labels_of(checkpoint, tmp_path / "predict")
    assert any(from_checkpoint.values())  # some image has labels above their thresholds
    assert len(from_checkpoint) == 30 and (tmp_path / "predict" / "predictions.csv").is_file()
    assert {name for labels in from_checkpoint.values() for name in labels} <= {"car", "cat", "dog"}
    onnx = export(compose_config("export", [f"ckpt_path={checkpoint}", "format=onnx"], tmp_path / "export"))
    assert labels_of(onnx, tmp_path / "predict_onnx") == from_checkpoint
