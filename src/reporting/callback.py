"""ReportCallback: records the curves and epoch times during fit, gathers the test predictions over all DDP ranks
and, on rank 0, writes the report files of artefacts.py into the run dir (and to TensorBoard)."""

import logging
import resource
import statistics
import time
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import PIL.Image
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from rich.console import Console
from tensorboard.compat.proto.summary_pb2 import Summary
from torchmetrics.utilities.distributed import gather_all_tensors

from src.reporting import artefacts, attention, resumed_fit
from src.reporting.run_metrics import metrics_to_floats, parameter_counts
from src.training.calibration import ECE_BINS
from src.training.loggers import log_report_files

log = logging.getLogger(__name__)

# epoch-level names in trainer.callback_metrics -> names in the curves (train/loss is logged per step too)
CURVE_METRICS = {
    "train": {"train/loss": "train/loss_epoch", "train/acc": "train/acc"},
    "val": {"val/loss": "val/loss", "val/acc": "val/acc", "val/map": "val/map"},
}


def _hydra_choices() -> dict[str, str]:
    """The model / data / freeze options this run was started with (e.g. `model=vit`), when run through Hydra."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {group: choices[group] for group in ("model", "data", "freeze") if choices.get(group)}


class ReportCallback(L.Callback):
    def __init__(self, output_dir: str, num_misclassified: int = 16, attention: bool = True):
        self.output_dir = Path(output_dir)
        self.num_misclassified = num_misclassified
        self.attention = attention  # attention.png: where the model looks on wrong and right test images
        # one row per epoch: {"epoch": 3, "train/loss": ..., "val/acc": ...}; and each epoch's wall time
        self.history: list[dict[str, float]] = []
        self.epoch_seconds: list[float] = []
        self.choices: dict[str, str] = {}
        self._peak_reset = False
        self._resumed = False
        # src.eval calibrate=temperature: the fitted temperature and the scores before and after, for summary.json
        self.calibration: dict | None = None
        self.summary: dict | None = (
            None  # what summary.json holds, once written (the HParams metrics read it)
        )

    # -- kept in checkpoints, so a resumed fit continues the curves and src.eval reports the training run's
    # curves, epoch times and model/data names (plain lists and dicts: checkpoints still load weights_only)
    def state_dict(self) -> dict:
        return {"history": self.history, "epoch_seconds": self.epoch_seconds, "choices": self.choices}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.history:  # testing the best checkpoint after fit: this run's full history wins
            return
        self.history = list(state_dict["history"])
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.choices = {**state_dict["choices"], **self.choices}  # e.g. src.eval data=... overrides

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda" and not self._peak_reset:
            # once per run (fit, then test), as the jobs of a sweep share a process: each peak is its own
            torch.cuda.reset_peak_memory_stats(device)
            self._peak_reset = True
        self.choices |= _hydra_choices()

    # -- fit: curves and epoch times
    def on_train_start(self, trainer, pl_module) -> None:
        # a fit resumed mid-epoch (SLURM requeue, every_n_train_steps) gets no on_train_epoch_start for it
        self._epoch_start = time.perf_counter()
        self._resumed = trainer.global_step > 0
        if self._resumed:
            resumed_fit.mark_tensorboard_restart(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (
            self._resumed
        ):  # the first batch of a resumed fit: Lightning's restart has set its logging step now
            resumed_fit.fix_logging_step(trainer)
            self._resumed = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # called after the epoch's validation: the time includes it, as a Keras epoch's does
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        self._record(trainer, "train")

    def _record(self, trainer: L.Trainer, stage: str) -> None:
        if not self.history or self.history[-1]["epoch"] != trainer.current_epoch:
            self.history.append({"epoch": trainer.current_epoch})
        metrics = trainer.callback_metrics
        for name, key in CURVE_METRICS[stage].items():
            if key in metrics:
                self.history[-1][name] = float(metrics[key])

    # -- test: keep predictions, and only the most confidently wrong images (not the whole test set)
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._test_start = time.perf_counter()
        self._targets, self._preds, self._confidences = [], [], []
        self._wrong: dict[str, torch.Tensor] | None = None
        self._right: dict[str, torch.Tensor] | None = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, targets = batch
        if getattr(pl_module, "multilabel", False):  # the probabilities: report.md's per-label table
            self._targets.append(targets)
            self._preds.append(outputs.float().sigmoid())
            self._keep_multilabel_mistakes(images, targets, self._preds[-1], pl_module.label_thresholds())
            return
        confidence, preds = outputs.float().softmax(dim=-1).max(dim=-1)
        self._targets.append(targets)
        self._preds.append(preds)
        self._confidences.append(confidence)
        wrong = preds != targets
        batch_wrong = {
            "wrong_confidence": confidence[wrong],
            "wrong_image": images[wrong],
            "wrong_target": targets[wrong],
            "wrong_pred": preds[wrong],
        }
        self._wrong = _most_confident(self._wrong, batch_wrong, self.num_misclassified, "wrong_confidence")
        if self.attention:
            self._right = attention.keep_right(self._right, images, targets, preds, confidence)

    @property
    def _mistakes_per_kind(self) -> int:
        return -(-self.num_misclassified // 2)  # of 16 images, 8 added and 8 missed labels

    def _keep_multilabel_mistakes(self, images, targets, probabilities, thresholds) -> None:
        """Of this batch and those before, the images with the most confidently added label and those with the
        most confidently missed one (half of num_misclassified each; an image may be in both)."""
        errors = artefacts.confident_errors(targets, probabilities, thresholds)
        n = self._mistakes_per_kind
        wrong = dict(self._wrong or {})
        for kind in ("added", "missed"):
            batch = {
                f"{kind}_confidence": errors[f"{kind}_confidence"],
                f"{kind}_label": errors[f"{kind}_label"],
                f"{kind}_image": images,
                f"{kind}_target": targets,
                f"{kind}_probability": probabilities,
            }
            kept = None if self._wrong is None else {key: wrong[key] for key in batch}
            wrong |= _most_confident(kept, batch, n, f"{kind}_confidence")
        self._wrong = wrong

    def multilabel_mistakes(self, gathered: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The kept (and gathered) mistakes by kind, most confident first, without the empty slots."""
        mistakes = {}
        n = self._mistakes_per_kind
        for kind in ("added", "missed"):
            confidence = gathered[f"{kind}_confidence"]
            order = confidence.argsort(descending=True, stable=True)
            order = order[confidence[order] >= 0][:n]
            mistakes[kind] = {
                key[len(kind) + 1 :]: value[order] for key, value in gathered.items() if key.startswith(kind)
            }
        return mistakes

    def on_test_end(self, trainer, pl_module) -> None:
        test_seconds = time.perf_counter() - self._test_start
        if getattr(pl_module, "multilabel", False):
            targets, probabilities = _gather(torch.cat(self._targets)), _gather(torch.cat(self._preds))
            wrong = {key: _gather(value) for key, value in self._wrong.items()}
            if trainer.is_global_zero:
                mistakes = self.multilabel_mistakes({key: value.cpu() for key, value in wrong.items()})
                self._write_multilabel(
                    trainer, pl_module, targets.cpu(), probabilities.cpu(), mistakes, test_seconds
                )
            return
        # every rank takes part in the gathers; only rank 0 writes
        local = {
            "target": torch.cat(self._targets),
            "pred": torch.cat(self._preds),
            "confidence": torch.cat(self._confidences),
            **self._wrong,
        }
        gathered = {key: _gather(value) for key, value in local.items()}
        peak = pl_module.all_gather(torch.tensor(_peak_memory_mib(pl_module.device), device=pl_module.device))
        if trainer.is_global_zero:
            self._write(
                trainer, pl_module, {k: v.cpu() for k, v in gathered.items()}, test_seconds, peak.max()
            )

    def _write(
        self, trainer, pl_module, gathered: dict[str, torch.Tensor], test_seconds: float, peak
    ) -> None:
        """report.md/.csv, the figures (PNG), the same to the loggers, and summary.json."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        targets, preds = gathered["target"].numpy(), gathered["pred"].numpy()
        names = _class_names(trainer, pl_module)
        report, markdown = self._write_classification_report(trainer, targets, preds, names)
        figures = self._draw_figures(trainer, pl_module, gathered, names)
        self._log_report(trainer, markdown, figures)
        for figure in figures.values():
            plt.close(figure)
        summary = self._summary(trainer, pl_module, report, names, len(targets), test_seconds, peak)
        artefacts.write_summary(summary, self.output_dir / "summary.json")
        self.summary = summary
        log.info(
            "Report, confusion matrix, reliability diagram, curves, misclassified images and summary.json in %s",
            self.output_dir,
        )

    def _write_multilabel(
        self, trainer, pl_module, targets, probabilities, mistakes: dict, test_seconds: float
    ) -> None:
        """report.md/.csv with each label's precision, recall, F1 (at its threshold), AP and support and the
        labels most often missed and added together, the PR curves, the co-occurrence of errors, the most
        confidently wrong images, the curves, and summary.json with the test mAP."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        names = _class_names(trainer, pl_module)
        thresholds = pl_module.label_thresholds().tolist()
        report = artefacts.multilabel_rows(targets.numpy(), probabilities.numpy(), thresholds, names)
        cooccurrence = artefacts.error_cooccurrence(targets.numpy(), probabilities.numpy() > thresholds)
        columns = artefacts.MULTILABEL_COLUMNS
        split_counts = getattr(trainer.datamodule, "split_counts", None)  # data=csv: images per label
        markdown = artefacts.write_report(
            report,
            self.output_dir,
            split_counts,
            columns,
            [artefacts.cooccurrence_markdown(cooccurrence, names)],
        )
        title = "Multi-label report (test)"
        summary_rows = len(artefacts.MULTILABEL_SUMMARY_ROWS)
        Console().print(artefacts.report_table(report, title, columns, summary_rows))
        out = self.output_dir
        figures = {
            "pr_curves": artefacts.plot_pr_curves(targets.numpy(), probabilities.numpy(), names, out / "pr_curves.png"),
            "error_cooccurrence": artefacts.plot_cooccurrence(cooccurrence, names, out / "error_cooccurrence.png"),
            "misclassified": self._plot_multilabel_mistakes(trainer, pl_module, mistakes, thresholds, names),
        }  # fmt: skip
        if self.history:
            figures["curves"] = artefacts.plot_curves(self.history, self.output_dir / "curves.png")
        self._log_report(trainer, markdown, figures)
        for figure in figures.values():
            plt.close(figure)
        peak = _peak_memory_mib(pl_module.device)
        summary = self._summary(trainer, pl_module, None, names, len(targets), test_seconds, peak)
        summary |= {"task": "multilabel", "thresholds": dict(zip(names, thresholds, strict=True))}
        artefacts.write_summary(summary, self.output_dir / "summary.json")
        self.summary = summary
        log.info(
            "Report, PR curves, error co-occurrence, misclassified images, curves and summary.json in %s",
            self.output_dir,
        )

    def _plot_multilabel_mistakes(self, trainer, pl_module, mistakes: dict, thresholds, names) -> Figure:
        """misclassified.png: the images with the most confidently added labels, then those with the most
        confidently missed ones, each titled with that label, its probability and the true and predicted sets."""
        images, titles = [], []
        for kind, kept in mistakes.items():
            images.append(kept["image"])
            titles += [
                artefacts.multilabel_mistake_title(kind, label, target.tolist(), probability.tolist(), thresholds, names)
                for label, target, probability in zip(kept["label"].tolist(), kept["target"], kept["probability"], strict=True)
            ]  # fmt: skip
        data = getattr(trainer.datamodule, "hparams", None) or pl_module.hparams.data
        return artefacts.plot_images(
            torch.cat(images), titles, data["mean"], data["std"], self.output_dir / "misclassified.png",
            title="Most confidently added and missed labels (test)", empty="no wrong labels in the test images",
            fontsize=8,
        )  # fmt: skip

    def _write_classification_report(self, trainer, targets, preds, names: list[str]) -> tuple[dict, str]:
        """Per-class precision, recall and F1 into report.md and report.csv, and as a table on the console."""
        report = artefacts.classification_rows(targets, preds, names)
        split_counts = getattr(trainer.datamodule, "split_counts", None)  # data=imagefolder/csv
        markdown = artefacts.write_report(report, self.output_dir, split_counts)
        Console().print(artefacts.report_table(report, "Classification report (test)"))
        return report, markdown

    def _draw_figures(
        self, trainer, pl_module, gathered: dict[str, torch.Tensor], names: list[str]
    ) -> dict[str, Figure]:
        """confusion_matrix.png, reliability.png, curves.png (after a fit), misclassified.png and attention.png, by
        name."""
        targets, preds = gathered["target"].numpy(), gathered["pred"].numpy()
        figures = {
            "confusion_matrix": artefacts.plot_confusion_matrix(
                targets, preds, names, self.output_dir / "confusion_matrix.png"
            )
        }
        if "test/ece" in trainer.callback_metrics:
            figures["reliability"] = artefacts.plot_reliability(
                gathered["confidence"].numpy(), targets == preds, float(trainer.callback_metrics["test/ece"]),
                self.output_dir / "reliability.png", n_bins=ECE_BINS,
            )  # fmt: skip
        if self.history:
            figures["curves"] = artefacts.plot_curves(self.history, self.output_dir / "curves.png")
        # each rank's most confident mistakes, padded with confidence -1: keep the best of all ranks
        filled = gathered["wrong_confidence"] >= 0
        wrong = {
            key[len("wrong_") :]: value[filled] for key, value in gathered.items() if key.startswith("wrong_")
        }
        top = wrong["confidence"].argsort(descending=True)[: self.num_misclassified]
        # the images were normalised with the test data's statistics
        data = getattr(trainer.datamodule, "hparams", None) or pl_module.hparams.data
        figures["misclassified"] = artefacts.plot_misclassified(
            wrong["image"][top],
            wrong["target"][top].tolist(),
            wrong["pred"][top].tolist(),
            wrong["confidence"][top].tolist(),
            names,
            data["mean"],
            data["std"],
            self.output_dir / "misclassified.png",
        )
        if self.attention:
            figures["attention"] = attention.plot_test_attention(
                pl_module, {key: value[top] for key, value in wrong.items()}, self._right, names,
                data["mean"], data["std"], self.output_dir / "attention.png",
            )  # fmt: skip
        return figures

    def _log_report(self, trainer, markdown: str, figures: dict[str, Figure]) -> None:
        """The report and figures to each logger: TensorBoard as text and images, the others as files."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                step = trainer.global_step
                logger.experiment.add_text("test/classification_report", markdown, step)
                for name in (
                    "confusion_matrix",
                    "reliability",
                    "attention",
                    "pr_curves",
                    "error_cooccurrence",
                ):
                    if name in figures:
                        summary = _png_summary(f"test/{name}", self.output_dir / f"{name}.png")
                        logger.experiment.file_writer.add_summary(summary, step)
            else:
                log_report_files(
                    logger, self.output_dir, ["report.md", "report.csv", *(f"{n}.png" for n in figures)]
                )

    def _summary(
        self,
        trainer,
        pl_module,
        report: dict | None,
        names: list[str],
        test_images: int,
        test_seconds: float,
        peak,
    ) -> dict:
        """What summary.json holds: the run's model, data, scores, sizes, speed and checkpoints (`report`: the
        single-label classification report; None for multi-label runs, whose test/map is the headline)."""
        backbone = pl_module.hparams.get("backbone", {})
        checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        return {
            "model": self.choices.get("model")
            or backbone.get("name")
            or backbone.get("model_name")
            or backbone.get("_target_"),
            "data": self.choices.get("data") or type(trainer.datamodule).__name__,
            "freeze": self.choices.get("freeze"),
            "num_classes": len(names),
            # the best epoch's val/acc (what the default checkpoint keeps); the history survives resume and eval
            "best_val_acc": max((row["val/acc"] for row in self.history if "val/acc" in row), default=None),
            **(
                {
                    "best_val_map": max(
                        (row["val/map"] for row in self.history if "val/map" in row), default=None
                    )
                }
                if report is None
                else {}
            ),
            "class_counts": getattr(trainer.datamodule, "split_counts", None) or None,
            "test": {
                **metrics_to_floats(
                    {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
                ),
                **(
                    {
                        "test/macro_f1": report["macro avg"]["f1-score"],
                        "test/weighted_f1": report["weighted avg"]["f1-score"],
                    }
                    if report is not None
                    else {}
                ),
            },
            **parameter_counts(pl_module),
            "seconds_per_epoch": statistics.fmean(self.epoch_seconds) if self.epoch_seconds else None,
            "test_images": test_images,
            "test_seconds": test_seconds,
            "images_per_second": test_images / test_seconds,
            "peak_memory_mib": float(peak),
            "peak_memory_of": "gpu" if pl_module.device.type == "cuda" else "process_rss",
            "best_checkpoint": checkpoint or None,
            "tested_checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "temperature": getattr(pl_module, "temperature", 1.0),
            **({"calibration": self.calibration} if self.calibration else {}),
        }


def _png_summary(tag: str, path: Path) -> Summary:
    """TensorBoard's image summary of the PNG file savefig wrote, its bytes as they are: SummaryWriter.add_image
    takes pixels and encodes them again (resampling them to the same size first): 0.1 s for the quickstart's two
    figures."""
    with PIL.Image.open(path) as image:
        width, height, channels = *image.size, len(image.getbands())
    png = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=path.read_bytes()
    )
    return Summary(value=[Summary.Value(tag=tag, image=png)])


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` of every DDP rank, one after the other. Ranks may hold different numbers of rows: each tests its
    own part of the test split, and the parts differ by one image when the split does not divide evenly."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    return torch.cat(gather_all_tensors(tensor))


def _most_confident(kept: dict | None, new: dict, n: int, by: str) -> dict:
    """The `n` rows of `kept` and `new` (dicts of tensors) of the highest `by`. Fixed-size padding for all_gather:
    before the first batch `kept` is None, and its n slots start empty, `by` -1."""
    if kept is None:
        kept = {key: value[:0].new_zeros((n, *value.shape[1:])) for key, value in new.items()}
        kept[by] -= 1
    merged = {key: torch.cat([kept[key], new[key]]) for key in kept}
    top = merged[by].topk(n).indices
    return {key: value[top] for key, value in merged.items()}


def _class_names(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None) or getattr(pl_module, "class_names", None)
    return list(names) if names else [str(i) for i in range(pl_module.hparams.num_classes)]


def _peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on `device`, or this process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB
