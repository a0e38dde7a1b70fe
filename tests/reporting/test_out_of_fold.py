"""Out-of-fold predictions: each fold run of a k-fold sweep predicts its own val fold with its best checkpoint;
src.compare joins them into one prediction per train+val image and the sweep's out-of-fold accuracy."""

import csv
import json

import numpy as np
import pytest
import yaml

from src.compare import main
from src.reporting.out_of_fold import out_of_fold_rows
from tests.conftest import QUICK, TINY_VIT, run_cli
from tests.reporting.test_compare import write_run


def test_out_of_fold_rows_name_image_fold_label_prediction_and_probabilities():
    probabilities = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    rows = out_of_fold_rows(
        ["a.png", "b.png", "c.png"], 1, np.array([0, 1, 1]), probabilities, ["cat", "dog"]
    )
    assert [(r["image"], r["fold"], r["label"], r["predicted"]) for r in rows] == [
        ("a.png", 1, 0, 0), ("b.png", 1, 1, 1), ("c.png", 1, 1, 0),
    ]  # fmt: skip
    assert (rows[1]["p_cat"], rows[1]["p_dog"]) == ("0.2", "0.8")


def test_compare_joins_the_folds_predictions_and_gives_the_out_of_fold_accuracy(tmp_path):
    correct = {0: [1, 1, 0], 1: [1, 0], 2: [1, 1, 1, 1]}  # 7 right of 9
    for fold, hits in correct.items():
        run = tmp_path / str(fold)
        write_run(run, ["data.folds=3", f"data.fold={fold}"], 0.8, 0.2)
        rows = ["image,fold,label,predicted,p_0,p_1"]
        rows += [f"{fold}{i},{fold},1,{hit},0.5,0.5" for i, hit in enumerate(hits)]
        (run / "oof_predictions.csv").write_text("\n".join(rows) + "\n")
    main([str(tmp_path)])
    with open(tmp_path / "oof_predictions.csv", newline="") as f:
        joined = list(csv.DictReader(f))
    assert [row["image"] for row in joined] == ["00", "01", "02", "10", "11", "20", "21", "22", "23"]
    with open(tmp_path / "comparison_groups.csv", newline="") as f:
        (group,) = csv.DictReader(f)
    assert (group["runs"], float(group["OOF acc"])) == ("3", pytest.approx(7 / 9))
    assert "| 0.7778 |" in (tmp_path / "comparison.md").read_text()


@pytest.mark.slow  # a sweep of two fold runs, then src.eval and src.compare, each in a process of its own
def test_a_fold_sweep_predicts_every_train_and_val_image_once_and_eval_tests_the_same_split(tmp_path):
    result = run_cli(
        "src.train", "-m", "data=digits", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=2",
        "data.folds=2", "data.fold=0,1", f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    folds = []
    for fold in (0, 1):
        with open(sweep / str(fold) / "oof_predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {row["fold"] for row in rows} == {str(fold)}
        folds.append({int(row["image"]) for row in rows})
    assert folds[0].isdisjoint(folds[1])
    # TensorBoard's HParams view: one row per fold, told apart by data/fold (the logged hparams.yaml of each run)
    for fold in (0, 1):
        hparams = yaml.safe_load((sweep / str(fold) / "tensorboard" / "hparams.yaml").read_text())
        assert (hparams["data/folds"], hparams["data/fold"]) == (2, fold)
    assert len(folds[0] | folds[1]) == 1797 - 360  # every image but digits' test split (data.test_size=360)

    (checkpoint,) = (sweep / "1" / "checkpoints").glob("epoch_*.ckpt")
    result = run_cli("src.eval", f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path}", *QUICK[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluated,) = (tmp_path / "eval" / "runs").glob("*/summary.json")
    trained = json.loads((sweep / "1" / "summary.json").read_text())["test"]
    assert json.loads(evaluated.read_text())["test"]["test/acc"] == pytest.approx(trained["test/acc"])

    result = run_cli("src.compare", str(sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "oof_predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1797 - 360
    assert "1437 out-of-fold predictions" in result.stdout


@pytest.mark.slow  # two DDP processes (gloo), then one
def test_a_fold_run_under_ddp_writes_every_val_image_once_as_one_process_does(tmp_path):
    common = ["data=digits", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=2", "data.folds=3", "data.fold=1",
              "test=false"]  # fmt: skip
    rows = {}
    for name, layout in (("ddp", ["trainer=ddp", "trainer.devices=2"]), ("one", [])):
        result = run_cli("src.train", *common, *layout, f"paths.log_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        (path,) = (tmp_path / name).glob("train/runs/*/oof_predictions.csv")
        with open(path, newline="") as f:
            rows[name] = list(csv.DictReader(f))
    # the same fold, every image once, with its label, in the same order; 1437 train+val images in 3 folds
    assert len(rows["ddp"]) == 479
    assert [(r["image"], r["fold"], r["label"]) for r in rows["ddp"]] == [
        (r["image"], r["fold"], r["label"]) for r in rows["one"]
    ]
    assert all(float(r["p_0"]) >= 0 for r in rows["ddp"])
