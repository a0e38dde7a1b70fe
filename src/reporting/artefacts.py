"""The files a run leaves for people to read, as pure functions of arrays: classification report (markdown,
CSV, rich table), confusion matrices, training curves, the reliability diagram, the most confidently wrong images,
summary.json; for multi-label runs the per-label PR curves and the co-occurrence of errors."""

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in DDP workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from src.upstream_fixes.checkpoint_io import atomic_write  # noqa: E402

REPORT_COLUMNS = ("precision", "recall", "f1-score", "support")
SUMMARY_ROWS = ("accuracy", "macro avg", "weighted avg")
# multi-label: each label a yes/no of its own, at its threshold; AP ranks the probabilities (no threshold)
MULTILABEL_COLUMNS = ("precision", "recall", "f1-score", "average precision", "threshold", "support")
MULTILABEL_SUMMARY_ROWS = ("micro avg", "macro avg")
# a PR figure stays readable with about ten curves: more labels show the ten of the lowest AP
MAX_PR_CURVES = 10


def classification_rows(y_true, y_pred, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """scikit-learn's per-class precision/recall/F1/support, then accuracy, macro and weighted averages.
    Every class gets a row, also one the test set lacks (its scores are 0, not an error)."""
    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    # scikit-learn gives accuracy as a bare float; as a row (in place, before the averages) it reads like
    # scikit-learn's text report and the CIFAR-10 notebook's tables (docs/reference-numbers.md)
    report["accuracy"] = {"f1-score": report["accuracy"], "support": report["weighted avg"]["support"]}
    return report


def multilabel_rows(
    y_true, probabilities, thresholds: Sequence[float], class_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per label: precision, recall and F1 of `probabilities` > its threshold, average precision, the threshold,
    support (test images with the label); then micro and macro averages (macro AP: the mAP). A label the test
    set lacks scores 0 (AP: NaN, left out of the macro average, as torchmetrics' mAP leaves it)."""
    y_true, probabilities = np.asarray(y_true).astype(int), np.asarray(probabilities, dtype=float)
    y_pred = (probabilities > np.asarray(thresholds)).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    ap = [
        average_precision_score(y_true[:, j], probabilities[:, j]) if y_true[:, j].any() else float("nan")
        for j in range(y_true.shape[1])
    ]
    report = {
        name: {
            "precision": precision[j],
            "recall": recall[j],
            "f1-score": f1[j],
            "average precision": ap[j],
            "threshold": float(thresholds[j]),
            "support": support[j],
        }
        for j, name in enumerate(class_names)
    }
    micro = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    report["micro avg"] = {
        **dict(zip(("precision", "recall", "f1-score"), micro[:3], strict=True)),
        "average precision": average_precision_score(y_true.ravel(), probabilities.ravel()),
        "support": int(support.sum()),
    }
    report["macro avg"] = {
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "f1-score": float(np.mean(f1)),
        "average precision": float(np.nanmean(ap)),
        "support": int(support.sum()),
    }
    return report


def _cells(
    row: dict[str, float], digits: int | None = 4, columns: Sequence[str] = REPORT_COLUMNS
) -> list[str]:
    """Table cells ('' where scikit-learn has no value); `digits=None` keeps full precision (the CSV)."""
    cells = []
    for key in columns:
        value = row.get(key)
        if value is None:
            cells.append("")
        elif key == "support":
            cells.append(str(int(value)))
        else:
            cells.append(str(value) if digits is None else f"{value:.{digits}f}")
    return cells


def write_report(
    report: dict[str, dict[str, float]],
    run_dir: Path,
    split_counts: dict[str, dict[str, int]] | None = None,
    columns: Sequence[str] = REPORT_COLUMNS,
    sections: Sequence[str] = (),
) -> str:
    """report.md and report.csv (the same rows); returns the markdown. With `split_counts` ({split: {class:
    images}}), report.md also gives each split's images per class (how imbalanced the data are); `sections`
    (markdown) follow in report.md."""
    lines = ["| class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in report.items():
        lines.append(f"| {name} | " + " | ".join(_cells(row, columns=columns)) + " |")
    if split_counts:
        splits = list(split_counts)
        lines += ["", "Images per class and split:", "", "| class | " + " | ".join(splits) + " |"]
        lines.append("|---" * (len(splits) + 1) + "|")
        for name in next(iter(split_counts.values())):
            lines.append(f"| {name} | " + " | ".join(str(split_counts[s][name]) for s in splits) + " |")
    markdown = "\n".join(lines) + "\n" + "".join("\n" + section for section in sections)
    (run_dir / "report.md").write_text(markdown)
    with open(run_dir / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *columns])
        writer.writerows([name, *_cells(row, digits=None, columns=columns)] for name, row in report.items())
    return markdown


def report_table(
    report: dict[str, dict[str, float]],
    title: str,
    columns: Sequence[str] = REPORT_COLUMNS,
    summary_rows: int = len(SUMMARY_ROWS),
) -> Table:
    table = Table(title=title)
    table.add_column("class")
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in report.items():
        table.add_row(name, *_cells(row, columns=columns))
    table.rows[-summary_rows - 1].end_section = True  # a rule between the classes and the averages
    return table


def plot_confusion_matrix(y_true, y_pred, class_names: Sequence[str], path: Path) -> Figure:
    """Counts on the left, each true class's row normalised to 1 on the right (recall on the diagonal)."""
    labels = list(range(len(class_names)))
    n = len(labels)
    side = min(max(5.0, 0.3 * n + 2), 24.0)  # inches: 102 flower names stay legible at 24
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), layout="constrained")
    for ax, normalize, title in zip(
        axes, (None, "true"), ("counts", "normalised over true class"), strict=True
    ):
        matrix = confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize)
        display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
        # numbers in the cells stay readable up to ~20 classes; beyond that the colours carry it
        display.plot(
            ax=ax,
            include_values=n <= 20,
            values_format="d" if normalize is None else ".2f",
            xticks_rotation="vertical",
            colorbar=False,
            cmap="Blues",
        )
        ax.set_title(f"Confusion matrix ({title})")
        if n > 40:
            ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=100)
    return fig


def plot_reliability(confidence, correct, ece: float, path: Path, n_bins: int = 15) -> Figure:
    """Reliability diagram (Guo et al. 2017, fig. 1): the test images in `n_bins` equal bins of top-1 confidence,
    each bin's accuracy against its mean confidence (a calibrated model sits on the diagonal), and how many images
    each bin holds; `ece`, the expected calibration error over the same bins (torchmetrics'), in the title."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # torchmetrics' bins (lower edge included); a confidence of exactly 1 joins the last one
    bins = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    filled = counts > 0
    accuracy = np.bincount(bins, weights=correct, minlength=n_bins)[filled] / counts[filled]
    mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins)[filled] / counts[filled]
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True, layout="constrained"
    )
    top.bar(centres[filled], accuracy, width=width, edgecolor="black", label="accuracy")
    top.bar(
        centres[filled], mean_confidence - accuracy, bottom=accuracy, width=width, color="tab:red",
        alpha=0.3, edgecolor="tab:red", label="gap to confidence",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability (test): ECE {100 * ece:.2f} %")
    top.legend(loc="upper left")
    bottom.bar(centres, counts, width=width, edgecolor="black")
    bottom.set(xlabel="top-1 confidence", ylabel="images")
    fig.savefig(path, dpi=100)
    return fig


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Figure:
    """Loss and accuracy (multi-label: mAP) per epoch, train and val, from rows like {'epoch': 0, 'train/loss': ...}."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    score = "map" if any("val/map" in row for row in history) else "acc"
    for ax, metric in zip(axes, ("loss", score), strict=True):
        for stage in ("train", "val"):
            points = [
                (row["epoch"], row[f"{stage}/{metric}"]) for row in history if f"{stage}/{metric}" in row
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=stage)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title({"loss": "loss", "acc": "accuracy", "map": "mAP (macro)"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)
    return fig


def displayable(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (N, C, H, W) images as (N, H, W, C) values in [0, 1], un-normalised with the data's mean/std."""
    shown = images.float().cpu() * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return shown.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid(n: int, cols: int = 4) -> tuple[Figure, np.ndarray]:
    """A figure of `n` image panels, 3 inches each with room for a two-line title, axes off. Fixed margins
    rather than a layout engine: constrained layout made drawing a 20-image grid half again as slow."""
    cols = max(1, min(n, cols))
    rows = max(1, -(-n // cols))
    height = 3.3 * rows + 0.7  # inches: the panels, and the figure's title above the first row's
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.0 / height, wspace=0.05, hspace=0.25)
    for ax in axes.flat:
        ax.axis("off")
        # no ticks at all: an axis turned off still lays out its default ticks when a title is placed above it,
        # which was half the time of drawing a grid (the same PNG, byte for byte)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def plot_images(
    images: torch.Tensor,
    titles: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
    title: str = "Most confidently wrong test images",
    empty: str = "no misclassified test images",
    fontsize: int = 9,
) -> Figure:
    """A grid of normalised (N, C, H, W) images, un-normalised with the data set's mean/std for display, each
    under its title (`empty` where there are none)."""
    fig, axes = image_grid(len(images))
    shown = displayable(images, mean, std)
    for ax, image, panel_title in zip(axes.flat, shown, titles, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(panel_title, fontsize=fontsize)
    if len(images) == 0:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return fig


def plot_misclassified(
    images: torch.Tensor,
    y_true: Sequence[int],
    y_pred: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
) -> Figure:
    """plot_images of single-label mistakes: the true class, the predicted one and its probability."""
    titles = [
        f"true: {class_names[true]}\npred: {class_names[pred]} ({p:.0%})"
        for true, pred, p in zip(y_true, y_pred, confidence, strict=True)
    ]
    return plot_images(images, titles, mean, std, path)


def confident_errors(targets: torch.Tensor, probabilities: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """Per image (rows of 0/1 `targets` and `probabilities`), its most confident wrong label of each kind: the
    added one (a false positive) of the highest probability, and the missed one (a false negative) of the lowest;
    `*_confidence` is how sure the model was (added: p, missed: 1 - p), -1 where the image has no such error."""
    predicted = probabilities > thresholds.to(probabilities.device)
    present = targets.bool()
    added = torch.where(predicted & ~present, probabilities, torch.full_like(probabilities, -1.0))
    missed = torch.where(present & ~predicted, 1 - probabilities, torch.full_like(probabilities, -1.0))
    added_confidence, added_label = added.max(dim=1)
    missed_confidence, missed_label = missed.max(dim=1)
    return {
        "added_confidence": added_confidence,
        "added_label": added_label,
        "missed_confidence": missed_confidence,
        "missed_label": missed_label,
    }


def multilabel_mistake_title(
    kind: str, label: int, target, probability, thresholds: Sequence[float], class_names: Sequence[str]
) -> str:
    """`added 7 (p 97%)` or `missed 5 (p 3%)`, then the image's true and predicted label sets."""

    def names(mask) -> str:
        return " ".join(name for name, on in zip(class_names, mask, strict=True) if on) or "-"

    predicted = [p > t for p, t in zip(probability, thresholds, strict=True)]
    return (
        f"{kind} {class_names[label]} (p {probability[label]:.0%})\n"
        f"true: {names(target)}\npred: {names(predicted)}"
    )


def write_summary(summary: dict, path: Path) -> None:
    """Strict JSON: a non-finite number (a diverged loss) is written as null, not as NaN, which most readers reject."""
    plain = json.loads(json.dumps(summary, default=_json_default))
    text = json.dumps(_finite_or_none(plain), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))  # src.compare never reads half a file


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def _json_default(value):
    if isinstance(value, np.generic | torch.Tensor):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def plot_pr_curves(y_true, probabilities, class_names: Sequence[str], path: Path) -> Figure:
    """scikit-learn's precision-recall curve of each label (its AP in the legend) and of all (image, label) pairs
    (micro-average, dashed). Of more than MAX_PR_CURVES labels, the MAX_PR_CURVES of the lowest AP (the title
    says so); a label the test set lacks has no curve."""
    y_true, probabilities = np.asarray(y_true).astype(int), np.asarray(probabilities, dtype=float)
    present = [j for j in range(y_true.shape[1]) if y_true[:, j].any()]
    shown = present
    title = "Precision-recall per label (test)"
    if len(present) > MAX_PR_CURVES:
        ap = {j: average_precision_score(y_true[:, j], probabilities[:, j]) for j in present}
        shown = sorted(present, key=lambda j: (ap[j], j))[:MAX_PR_CURVES]
        title += f": the {MAX_PR_CURVES} of {len(present)} labels with the lowest AP"
    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    for j in shown:
        PrecisionRecallDisplay.from_predictions(y_true[:, j], probabilities[:, j], name=class_names[j], ax=ax)
    PrecisionRecallDisplay.from_predictions(
        y_true.ravel(), probabilities.ravel(), name="micro-average", ax=ax,
        curve_kwargs={"color": "black", "linestyle": "--"},
    )  # fmt: skip
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)  # beside the curves, not over them
    ax.set(xlabel="recall", ylabel="precision")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def error_cooccurrence(y_true, y_pred) -> np.ndarray:
    """Labels x labels: in how many images label i is missed (a false negative) while label j is added (a false
    positive), the multi-label confusion of i with j; the diagonal is 0 (a label is never both)."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    missed, added = y_true & (1 - y_pred), (1 - y_true) & y_pred
    return missed.T @ added


def cooccurrence_markdown(matrix: np.ndarray, class_names: Sequence[str], top: int = 10) -> str:
    """The `top` pairs (missed, added) of the most images, most first (ties in label order); none: says so."""
    rows, cols = np.nonzero(matrix)
    pairs = sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda ij: (-matrix[ij], ij))[:top]
    lines = ["Labels missed and added in the same image (most images first):", ""]
    if not pairs:
        return "\n".join([*lines, "no test image has a missed and an added label"]) + "\n"
    lines += ["| missed | added | images |", "|---|---|---|"]
    lines += [f"| {class_names[i]} | {class_names[j]} | {matrix[i, j]} |" for i, j in pairs]
    return "\n".join(lines) + "\n"


def plot_cooccurrence(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Figure:
    """The error_cooccurrence counts as a confusion-matrix-like heat map: rows the missed label, columns the
    added one."""
    n = len(class_names)
    side = min(max(5.0, 0.3 * n + 2), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, include_values=n <= 20, values_format="d", xticks_rotation="vertical", cmap="Reds")
    ax.set(xlabel="added (false positive)", ylabel="missed (false negative)")
    ax.set_title("Labels missed and added in the same test image")
    if n > 40:
        ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=100)
    return fig
