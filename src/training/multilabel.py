"""Multi-label classification (`module.task=multilabel`): each image has any number of the labels, each label a
yes/no of its own (a sigmoid per logit). Its losses, metrics, and the per-label thresholds that turn
probabilities into labels: fitted on the validation split (each label's F1-maximising one, or the one of the highest
recall at a chosen precision), kept in the checkpoint
as the plain list `checkpoint["thresholds"]`, applied by test, src.eval and src.predict (a label is predicted
when its probability is above its threshold)."""

import logging

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelHammingDistance,
)

from src.errors import UserError

TASKS = ("multiclass", "multilabel")
# how module.thresholds fits each label's threshold on val
THRESHOLD_FITS = ("f1", "precision")
# where a checkpoint keeps the fitted thresholds (one float per label)
THRESHOLDS_KEY = "thresholds"

log = logging.getLogger(__name__)


def resolve_task(requested: str | None, data_task: str, data_name: str) -> str:
    """module.task as given, or (null) the data's; a single-label model of multi-label data is an error."""
    if requested not in (None, *TASKS):
        raise UserError(
            f"module.task={requested} is unknown: use multiclass, multilabel or null (the data's)"
        )
    if requested is not None and requested != data_task:
        raise UserError(
            f"module.task={requested}, but {data_name} gives {data_task} labels: leave module.task unset (null)"
        )
    return data_task


def criterion(loss: str | None, pos_weight: torch.Tensor | None = None) -> nn.Module:
    """BCE with logits (`pos_weight`: each label's weight of its positives), or timm's asymmetric loss."""
    if loss in (None, "bce"):
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if loss == "asl":
        from timm.loss import AsymmetricLossMultiLabel

        # mean over labels and images, as BCE's, so that the learning rates of one loss suit the other
        return AsymmetricLossMultiLabel(reduction="mean", pos_weight=pos_weight)
    raise UserError(f"module.loss={loss} is unknown for multi-label data: use bce or asl")


def balanced_pos_weight(targets: torch.Tensor) -> torch.Tensor:
    """Per label, its negatives over its positives in the training split (`targets`: N x labels, 0/1): a rare
    label's positives then weigh as much as its negatives (a label without positives keeps weight 1)."""
    positives = targets.sum(dim=0)
    negatives = len(targets) - positives
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives))


def ranking_metrics(num_labels: int, test: bool = False) -> MetricCollection:
    """Metrics of the probabilities themselves: mAP (macro: val/map, what checkpoints monitor; micro), and on
    test the per-label AUROC's mean."""
    metrics = {
        "map": MultilabelAveragePrecision(num_labels, average="macro", validate_args=False),
        "map_micro": MultilabelAveragePrecision(num_labels, average="micro", validate_args=False),
    }
    if test:
        metrics["auroc"] = MultilabelAUROC(num_labels, average="macro", validate_args=False)
    return MetricCollection(metrics)


def thresholded_metrics(num_labels: int) -> MetricCollection:
    """Metrics of the predicted label sets: they take `shifted_probabilities`, so that torchmetrics' single
    threshold of 0.5 applies each label's own threshold."""
    return MetricCollection(
        {
            "f1": MultilabelF1Score(num_labels, average="macro", validate_args=False),
            "f1_micro": MultilabelF1Score(num_labels, average="micro", validate_args=False),
            "exact_match": MultilabelExactMatch(num_labels, validate_args=False),
            "hamming": MultilabelHammingDistance(num_labels, validate_args=False),
        }
    )


def shifted_probabilities(logits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """sigmoid(logit - logit(threshold)): above 0.5 exactly where sigmoid(logit) is above the label's threshold."""
    return torch.sigmoid(logits.float() - torch.logit(thresholds.to(logits.device).double()).float())


def fit_thresholds(probabilities: np.ndarray, targets: np.ndarray, default: float = 0.5) -> list[float]:
    """Per label, the threshold whose predictions (probability > threshold) have the highest F1 on these
    images: the midway point between the lowest probability predicted positive and the next one below it, so
    that any probability a little off the fitted ones lands on the same side. A label without positives here
    keeps `default`. Among cuts of equal F1, the one predicting the fewest labels."""
    thresholds = []
    for p, y in zip(np.asarray(probabilities, float).T, np.asarray(targets).T, strict=True):
        positives = y.sum()
        if positives == 0:
            thresholds.append(default)
            continue
        order = np.argsort(-p, kind="stable")
        p, y = p[order], y[order]
        # cut after position k-1 only where the next probability differs (ties go to the same side)
        cuts = np.flatnonzero(np.append(p[1:] < p[:-1], True)) + 1
        true_positives = np.cumsum(y)[cuts - 1]
        f1 = 2 * true_positives / (cuts + positives)
        k = cuts[np.argmax(f1)]
        below = p[k] if k < len(p) else 0.0
        thresholds.append(float((p[k - 1] + below) / 2))
    return thresholds


def check_threshold_fit(fit: str, target_precision) -> None:
    """module.thresholds and module.target_precision (the precision that thresholds=precision reaches)."""
    if fit not in THRESHOLD_FITS:
        raise UserError(f"module.thresholds={fit} is unknown: use f1 or precision")
    if fit == "precision" and (
        isinstance(target_precision, bool)
        or not isinstance(target_precision, int | float)
        or not 0 < target_precision <= 1
    ):
        raise UserError(
            f"module.target_precision={target_precision} must lie in (0, 1] with module.thresholds=precision"
        )


def fit_precision_thresholds(
    probabilities: np.ndarray, targets: np.ndarray, target_precision: float, default: float = 0.5
) -> tuple[list[float], list[int]]:
    """Per label, the threshold of the highest recall whose precision on these images is at least
    `target_precision` (torchmetrics' recall at fixed precision; among cuts of that recall, the one predicting the
    fewest labels), placed midway below the lowest probability it keeps as fit_thresholds places it. A label that
    reaches the precision at no cut keeps its F1-maximising threshold (fit_thresholds): its index is returned with
    the others in `unreached`."""
    from torchmetrics.functional.classification import multilabel_recall_at_fixed_precision

    probabilities, targets = np.asarray(probabilities, float), np.asarray(targets)
    _, cuts = multilabel_recall_at_fixed_precision(
        torch.from_numpy(probabilities),
        torch.from_numpy(targets).long(),
        num_labels=targets.shape[1],
        min_precision=float(target_precision),
        validate_args=False,
    )
    fallback = fit_thresholds(probabilities, targets, default)
    thresholds, unreached = [], []
    for j, cut in enumerate(cuts.tolist()):
        if np.isnan(cut):  # torchmetrics: no cut of that precision keeps a positive
            thresholds.append(fallback[j])
            unreached.append(j)
            continue
        # torchmetrics keeps probabilities >= cut; here a label is predicted above its threshold
        below = probabilities[:, j][probabilities[:, j] < cut]
        thresholds.append(float((cut + (below.max() if len(below) else 0.0)) / 2))
    return thresholds, unreached


def settle_task(cfg: DictConfig, data_task: str, data_name: str) -> str:
    """Sets cfg.module.task from the data where null (saying so in the log); for multi-label data, the callbacks
    and sweeps that follow val/acc (which multi-label runs do not log) follow val/map instead."""
    requested = cfg.module.get("task")
    task = resolve_task(requested, data_task, data_name)
    log.info("module.task=%s (%s)", task, f"from {data_name}" if requested is None else "as given")
    if task == "multiclass":
        return task
    with open_dict(cfg):
        cfg.module.task = task
        for name, callback in (cfg.get("callbacks") or {}).items():
            if callback and callback.get("monitor") == "val/acc":
                callback.monitor, callback.mode = "val/map", "max"
                log.info("callbacks.%s follows val/map (mode max): multi-label runs log no val/acc", name)
        if cfg.get("optimized_metric") == "val/acc":
            cfg.optimized_metric = "val/map"
    return task
