"""The numbers a run is judged by, read from its summary.json: one definition for src.compare's table and the
metrics of TensorBoard's HParams view (`hp/<name>`), so the two always show the same values. A run shows those
it has: a multi-label run the mAP, a single-label one the accuracy."""

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # src.compare reads HEADLINE without loading torch
    import torch

# name in TensorBoard (hp/<name>) -> (column in src.compare, how to read it from summary.json)
HEADLINE: dict[str, tuple[str, Callable[[dict], float | None]]] = {
    "val/acc_best": ("best val acc", lambda s: s.get("best_val_acc")),
    "test/acc": ("test acc", lambda s: s["test"].get("test/acc")),
    "test/loss": ("test loss", lambda s: s["test"].get("test/loss")),
    "test/macro_f1": ("macro F1", lambda s: s["test"].get("test/macro_f1")),
    # multi-label runs: their headline instead of the accuracy (a single-label run has none of these)
    "val/map_best": ("best val mAP", lambda s: s.get("best_val_map")),
    "test/map": ("test mAP", lambda s: s["test"].get("test/map")),
    "seconds_per_epoch": ("s/epoch", lambda s: s.get("seconds_per_epoch")),
    "peak_memory_mib": ("peak memory MiB", lambda s: s.get("peak_memory_mib")),
}


def headline_metrics(summary: dict) -> dict[str, float]:
    """The HEADLINE numbers of a summary.json (as a dict), under their TensorBoard names; missing ones left out."""
    values = {name: get(summary) for name, (_, get) in HEADLINE.items()}
    return {name: float(value) for name, value in values.items() if value is not None}


def metrics_to_floats(metrics: Mapping[str, "torch.Tensor"]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def parameter_counts(model: "torch.nn.Module") -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable, "params_frozen": total - trainable}
