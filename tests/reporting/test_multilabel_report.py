"""The multi-label report's figures and tables on constructed probabilities: the PR curves carry scikit-learn's
AP, the co-occurrence of errors counts the right images, the most confidently wrong images are the right ones
over several batches, and src.compare puts a multi-label run beside a single-label one."""

import csv

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from src.compare import main as compare_main
from src.reporting import artefacts
from src.reporting.callback import ReportCallback
from src.reporting.run_metrics import headline_metrics

NAMES = ["cat", "dog", "car"]


def test_pr_curves_show_each_labels_ap_and_the_micro_average(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 3))
    y[:, 2] = 0  # a label the test set lacks has no curve
    p = np.clip(rng.random((60, 3)) * 0.7 + 0.3 * y, 0, 1)
    fig = artefacts.plot_pr_curves(y, p, NAMES, tmp_path / "pr.png")
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    micro = average_precision_score(y.ravel(), p.ravel())
    assert legend == [
        f"cat (AP = {average_precision_score(y[:, 0], p[:, 0]):.2f})",
        f"dog (AP = {average_precision_score(y[:, 1], p[:, 1]):.2f})",
        f"micro-average (AP = {micro:.2f})",
    ]
    assert matplotlib.image.imread(tmp_path / "pr.png").shape[:2] == (600, 900)

    # 12 labels: the 10 of the lowest AP (label j's AP falls with j here: 10 and 11 are the best two)
    y = np.tile(np.eye(2, dtype=int)[:, :1], (30, 12))
    y[0] = 0
    noise = np.linspace(0, 1, 12)
    p = np.clip(y * (1 - noise) + rng.random((60, 12)) * noise, 0, 1)
    names = [f"l{j}" for j in range(12)]
    fig = artefacts.plot_pr_curves(y, p, names, tmp_path / "pr12.png")
    legend = [text.get_text().split(" ")[0] for text in fig.axes[0].get_legend().get_texts()]
    ap = [average_precision_score(y[:, j], p[:, j]) for j in range(12)]
    assert legend == [names[j] for j in sorted(range(12), key=lambda j: ap[j])[:10]] + ["micro-average"]
    assert fig.axes[0].get_title().endswith("the 10 of 12 labels with the lowest AP")


def test_error_cooccurrence_counts_missed_and_added_labels_of_the_same_image():
    y_true = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    y_pred = np.array([[0, 1, 0], [0, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
    matrix = artefacts.error_cooccurrence(y_true, y_pred)
    # image 0: cat missed, dog added; 1: cat missed, dog and car added; 2: dog missed, car added; 4: car missed
    assert matrix.tolist() == [[0, 2, 1], [0, 0, 1], [0, 0, 0]]
    assert artefacts.cooccurrence_markdown(matrix, NAMES) == (
        "Labels missed and added in the same image (most images first):\n\n"
        "| missed | added | images |\n|---|---|---|\n| cat | dog | 2 |\n| cat | car | 1 |\n| dog | car | 1 |\n"
    )
    assert "no test image has a missed and an added label" in artefacts.cooccurrence_markdown(
        np.zeros((3, 3), int), NAMES
    )


def test_most_confidently_wrong_images_over_batches(tmp_path):
    """Two batches; thresholds 0.5 but car's 0.8. Each image's tensor holds its number, to see which are kept."""
    callback = ReportCallback(str(tmp_path), num_misclassified=4)  # two of each kind
    callback.on_test_epoch_start(None, None)
    thresholds = torch.tensor([0.5, 0.5, 0.8])
    batches = [
        # image 0: car added at 0.9 (also dog missed at 0.4); 1: right; 2: cat added at 0.6
        ([[0, 1, 0], [1, 0, 0], [0, 1, 0]], [[0.2, 0.4, 0.9], [0.7, 0.1, 0.3], [0.6, 0.8, 0.1]]),
        # image 3: car at 0.7 is below its threshold: missed; 4: dog added at 0.95; 5: cat missed at 0.45
        ([[0, 0, 1], [1, 0, 0], [1, 0, 0]], [[0.1, 0.2, 0.7], [0.9, 0.95, 0.1], [0.45, 0.3, 0.2]]),
    ]
    start = 0
    for targets, probabilities in batches:
        images = torch.arange(start, start + 3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 2, 2)
        callback._keep_multilabel_mistakes(
            images, torch.tensor(targets), torch.tensor(probabilities), thresholds
        )
        start += 3
    mistakes = callback.multilabel_mistakes(callback._wrong)
    added, missed = mistakes["added"], mistakes["missed"]
    assert added["image"][:, 0, 0, 0].tolist() == [4, 0]  # dog at 0.95, car at 0.9 (cat at 0.6 is third)
    assert added["label"].tolist() == [1, 2]
    assert added["confidence"].tolist() == pytest.approx([0.95, 0.9])
    # dog at 0.4 (absent, by 1 - 0.4), cat at 0.45; car at 0.7 (by 0.3, under its threshold 0.8) is third
    assert missed["image"][:, 0, 0, 0].tolist() == [0, 5]
    assert missed["label"].tolist() == [1, 0]
    assert missed["confidence"].tolist() == pytest.approx([0.6, 0.55])
    assert missed["target"].tolist() == [[0, 1, 0], [1, 0, 0]]
    assert missed["probability"][1].tolist() == pytest.approx([0.45, 0.3, 0.2])
    title = artefacts.multilabel_mistake_title(
        "added", 2, [0, 1, 0], [0.2, 0.4, 0.9], thresholds.tolist(), NAMES
    )
    assert title == "added car (p 90%)\ntrue: dog\npred: car"
    fig = artefacts.plot_images(
        torch.cat([added["image"], missed["image"]]), [title] * 4, [0.5] * 3, [0.5] * 3, tmp_path / "m.png"
    )
    assert [ax.get_title() for ax in fig.axes] == [title] * 4


def _summary(test: dict, **more) -> dict:
    return {
        "model": "vit", "data": "digits", "freeze": None, "params_total": 10, "params_trainable": 10,
        "test_seconds": 1.0, "seconds_per_epoch": 2.0, "peak_memory_mib": 300.0, "test": test, **more,
    }  # fmt: skip


def test_compare_puts_a_multi_label_run_beside_a_single_label_one(tmp_path):
    single = _summary({"test/acc": 0.9, "test/loss": 0.3, "test/macro_f1": 0.88}, best_val_acc=0.91)
    multi = _summary(
        {"test/map": 0.97, "test/loss": 0.1, "test/f1": 0.9}, best_val_map=0.96, task="multilabel"
    )
    for name, summary in (("single", single), ("multi", multi)):
        (tmp_path / name).mkdir()
        artefacts.write_summary(summary, tmp_path / name / "summary.json")
    # the HParams view's metrics of each: what it has
    assert headline_metrics(multi) == {
        "val/map_best": 0.96, "test/map": 0.97, "test/loss": 0.1, "seconds_per_epoch": 2.0,
        "peak_memory_mib": 300.0,
    }  # fmt: skip
    assert "test/map" not in headline_metrics(single)

    compare_main([str(tmp_path / "single"), str(tmp_path / "multi"), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "comparison.md").read_text().splitlines()
    assert markdown[0] == (
        "| run | model | data | freeze | best val acc | test acc | test loss | macro F1 | best val mAP | test mAP "
        "| params | trainable params | s/epoch | test s | peak memory MiB |"
    )
    assert markdown[2].startswith(
        "| single | vit | digits | none | 0.9100 | 0.9000 | 0.3000 | 0.8800 |  |  |"
    )
    assert markdown[3].startswith("| multi | vit | digits | none |  |  | 0.1000 |  | 0.9600 | 0.9700 |")
    with open(tmp_path / "out" / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["test acc"], row["test mAP"]) for row in rows] == [("0.9", ""), ("", "0.97")]
    assert (tmp_path / "out" / "comparison.png").is_file()

    # single-label runs alone: no mAP columns
    compare_main([str(tmp_path / "single"), "--out", str(tmp_path / "alone")])
    assert "mAP" not in (tmp_path / "alone" / "comparison.md").read_text()
