"""The one LightningModule: any backbone + cross-entropy + torchmetrics + optimizer/scheduler from config.

It receives the backbone, optimizer and scheduler as configs (`_recursive_: false`) and builds them itself,
so a checkpoint alone rebuilds the model: `ClassifierModule.load_from_checkpoint(path)` needs no config.
"""

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torchmetrics import CatMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from src.data.preprocessing import preprocessing_facts
from src.data.tta import Views, mean_probabilities
from src.errors import UserError
from src.runs.resume import read_checkpoint
from src.runs.safe_config import current_target
from src.training import multilabel
from src.training.calibration import ECE_BINS, TEMPERATURE_KEY
from src.training.freezing import (
    UnfreezeAtEpoch,
    apply_freezing,
    frozen_batchnorm_to_eval,
    optimizer_param_groups,
)
from src.training.optimizers import effective_batch_size, scaled_lr
from src.training.schedulers import build_lr_scheduler
from src.upstream_fixes.lightning import (
    MetricsLoggedOncePerEpoch,
    logger_writes_this_step,
    progress_bar_value,
)

log = logging.getLogger(__name__)


def _plain(config):
    """A plain dict (or None) whose `_target_`s are today's names (src/runs/safe_config.py, MOVED_TARGETS)."""
    config = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    if not isinstance(config, dict):
        return config
    return {
        key: current_target(value) if key == "_target_" else _plain(value) for key, value in config.items()
    }


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        backbone: DictConfig,
        optimizer: DictConfig,
        scheduler: DictConfig | None,
        num_classes: int,
        label_smoothing: float = 0.0,
        data: DictConfig | None = None,
        freeze: DictConfig | None = None,
        distill: DictConfig | None = None,
        class_weights: str | None = None,
        mixup: DictConfig | None = None,
        task: str | None = None,
        loss: str | None = None,
        thresholds: str = "f1",
        target_precision: float = 0.9,
    ):
        """`data` is the data config the model was trained with, kept so that eval and predict can rebuild
        the same inputs from the checkpoint alone. `freeze` (conf/freeze/) says which backbone parameters
        train; it is applied here, so parameter counts and rebuilt checkpoints see the frozen model. `distill`
        (conf/distill/): a teacher's term on top of the training loss (src/training/distillation.py).
        `class_weights=balanced` weighs the loss of each class by its inverse frequency in the training split.
        `mixup` (conf/mixup/, see mixing.py) mixes training batches; their loss is then the soft-target
        cross-entropy. `task`: multiclass (null: src.train sets the data's) or multilabel (multilabel.py: a
        sigmoid per label, `loss` bce or asl, mAP metrics, per-label thresholds fitted on val); for multilabel,
        class_weights=balanced weighs each label's positives by its negatives over its positives. `thresholds`:
        how each validation pass fits the labels' thresholds: f1 (each label's F1-maximising one) or precision (the
        highest recall at a precision of at least `target_precision`)."""
        super().__init__()
        # filled from the DataModule when a checkpoint is saved, and from the checkpoint when one is loaded
        self.class_names: list[str] = []
        # test and predict only: the checkpoint's fitted temperature (calibration.py), and the views of
        # test-time augmentation that src.eval sets (src/data/tta.py)
        self.temperature = 1.0
        self.tta: Views | None = None
        # plain dicts, not DictConfigs: checkpoints then load with torch.load(weights_only=True)
        backbone, optimizer, scheduler, data, freeze, distill, mixup = map(
            _plain, (backbone, optimizer, scheduler, data, freeze, distill, mixup)
        )
        self.save_hyperparameters(logger=False)
        # speed switches that every model config carries next to the backbone's own settings
        backbone = dict(backbone)
        compile_backbone = backbone.pop("compile", False)
        self.channels_last = backbone.pop("channels_last", False)
        self.backbone: nn.Module = instantiate(backbone)
        freeze = dict(freeze or {"mode": "none"})
        self.unfreeze_at_epoch = freeze.pop("unfreeze_at_epoch", None)
        apply_freezing(self.backbone, **freeze)
        frozen_batchnorm_to_eval(self.backbone)  # Lightning keeps submodule modes: fit does not call train()
        if self.channels_last:  # NHWC: faster convolutions on tensor cores
            self.backbone.to(memory_format=torch.channels_last)
        if compile_backbone:  # in place, so state_dict keys (and checkpoints) stay those of the eager model
            self.backbone.compile()
        elif data and data.get("image_size"):
            # one image through the model at fit start: the model summary then shows real FLOPs per image and
            # each layer's input/output sizes (not when compiled: that pass would compile the model once more)
            size = data["image_size"]
            self.example_input_array = torch.zeros(1, backbone.get("in_chans", 3), size, size)
        self.multilabel = task == "multilabel"
        distill = dict(distill or {"mode": "none"})
        if self.multilabel:
            refused = {
                "module.label_smoothing": label_smoothing != 0.0,
                "mixup": bool(mixup and mixup.get("prob", 0.0) != 0.0),
                "distill": distill["mode"] != "none",
            }
            if named := [name for name, given in refused.items() if given]:
                raise UserError(
                    f"{', '.join(named)} work on single-label data only: with multi-label data use "
                    "module.label_smoothing=0.0 mixup=none distill=none"
                )
            self.criterion = multilabel.criterion(loss)
            multilabel.check_threshold_fit(thresholds, target_precision)
        elif thresholds != "f1":
            raise UserError(
                f"module.thresholds={thresholds} is for multi-label data: single-label data has none"
            )
        elif loss not in (None, "ce"):
            raise UserError(f"module.loss={loss} is for multi-label data: single-label data trains with ce")
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # multi-label: a probability above its label's threshold is a prediction (fitted on each validation pass,
        # kept in checkpoints); `threshold` (src.train/src.eval threshold=0.5) overrides them all when set
        self.thresholds = torch.full((num_classes,), 0.5)
        self.threshold: float | None = None
        self.distillation = None
        if distill["mode"] != "none":  # imports timm, which a run without a teacher never loads
            from src.training.distillation import Distillation

            self.distillation = Distillation(
                self.backbone, num_classes, data or {}, load_checkpoint, **distill
            )
        if class_weights not in (None, "balanced"):
            raise UserError(f"module.class_weights={class_weights} is unknown: use balanced or null")
        self.mixup = None  # mixup=none is prob 0: no mixer at all, hard labels
        if mixup and mixup.get("prob", 0.0) != 0.0:  # timm's Mixup, imported only then
            from src.training.mixing import BatchMixup

            self.mixup = BatchMixup(num_classes, **mixup)
        # probability targets: torch's cross-entropy is then timm's SoftTargetCrossEntropy (tests/training/test_recipes.py)
        self.soft_criterion = nn.CrossEntropyLoss()
        if self.multilabel:
            self._multilabel_metrics(num_classes)
            self.epoch_metrics = MetricsLoggedOncePerEpoch()
            return
        # no per-batch input checks: they wait for the GPU (a sync per step); a NaN loss then shows as a NaN mean
        metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False)}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(
                num_classes, top_k=5, average="micro", validate_args=False
            )
        metrics = MetricCollection(metrics)
        # one set per stage: metric state must not mix train, val and test batches
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
        # the mean of the per-class recalls: what accuracy means when the classes are imbalanced; and the expected
        # calibration error: how far the top-1 confidence is from the accuracy, in 15 bins of confidence
        self.test_metrics.add_metrics(
            {
                "balanced_acc": MulticlassAccuracy(num_classes, average="macro", validate_args=False),
                "ece": MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, validate_args=False),
            }
        )
        # the epoch's metric objects go to self.log at the first step only (src/upstream_fixes/lightning.py)
        self.epoch_metrics = MetricsLoggedOncePerEpoch()

    def _multilabel_metrics(self, num_labels: int) -> None:
        """Per stage: mAP of the probabilities, F1 & co. of the thresholded labels, the mean loss; and the
        validation probabilities and labels that thresholds are fitted to (gathered over DDP ranks)."""
        for stage in ("train", "val", "test"):
            ranking = multilabel.ranking_metrics(num_labels, test=stage == "test")
            setattr(self, f"{stage}_metrics", ranking.clone(prefix=f"{stage}/"))
            setattr(
                self,
                f"{stage}_thresholded",
                multilabel.thresholded_metrics(num_labels).clone(prefix=f"{stage}/"),
            )
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
        self.val_probabilities, self.val_targets = CatMetric(), CatMetric()

    def setup(self, stage: str) -> None:
        if self.multilabel and self.hparams.get("class_weights") == "balanced":
            targets = getattr(self.trainer.datamodule, "train_targets", None)
            if targets is None:
                raise UserError(
                    "module.class_weights=balanced needs the training split's labels, which "
                    f"{type(self.trainer.datamodule).__name__} does not give"
                )
            pos_weight = multilabel.balanced_pos_weight(targets()).to(self.device)
            self.criterion = multilabel.criterion(self.hparams.loss, pos_weight)
        elif self.hparams.get("class_weights") == "balanced":
            counts = getattr(self.trainer.datamodule, "split_counts", {}).get("train")
            if counts is None:
                raise UserError(
                    "module.class_weights=balanced needs the training split's class counts, which "
                    f"{type(self.trainer.datamodule).__name__} does not give: use data=imagefolder or data=csv"
                )
            labels = np.repeat(np.arange(len(counts)), list(counts.values()))
            weights = compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)
            # not persistent: checkpoints keep their keys, and eval weighs by the data set it is given
            self.criterion.register_buffer(
                "weight", torch.tensor(weights, dtype=torch.float32, device=self.device), persistent=False
            )

    def train(self, mode: bool = True):
        super().train(mode)
        frozen_batchnorm_to_eval(self.backbone)  # as in Keras: frozen BatchNorm keeps its running statistics
        return self

    def on_fit_start(self) -> None:
        self.temperature = 1.0  # a temperature fitted to other weights (a resumed calibrated checkpoint)

    def on_train_epoch_start(self) -> None:
        self.epoch_metrics.new_epoch("train")
        if self.mixup is not None:
            self.mixup.set_epoch(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        self.epoch_metrics.new_epoch("val")
        if self.multilabel:
            self.val_probabilities.reset()
            self.val_targets.reset()

    def on_validation_epoch_end(self) -> None:
        # the checkpoint saved after this pass keeps the thresholds fitted to it
        if self.multilabel and self.val_targets.update_count:
            probabilities, targets = self.val_probabilities.compute(), self.val_targets.compute()
            probabilities, targets = probabilities.cpu().numpy(), targets.cpu().numpy()
            if self.hparams.get("thresholds", "f1") == "f1":
                fitted = multilabel.fit_thresholds(probabilities, targets)
            else:
                precision = self.hparams.target_precision
                fitted, unreached = multilabel.fit_precision_thresholds(probabilities, targets, precision)
                if unreached and not self.trainer.sanity_checking:
                    names = getattr(self.trainer.datamodule, "class_names", None) or self.class_names
                    named = ", ".join(str(names[j]) if names else str(j) for j in unreached)
                    log.warning(
                        "labels %s reach a precision of %s at no threshold on val: they keep their "
                        "F1-maximising thresholds (module.thresholds=precision)",
                        named,
                        precision,
                    )
            self.thresholds = torch.tensor(fitted)

    def on_test_epoch_start(self) -> None:
        self.epoch_metrics.new_epoch("test")

    def configure_callbacks(self):
        return [] if self.unfreeze_at_epoch is None else [UnfreezeAtEpoch(self.unfreeze_at_epoch)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def inference_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Test and predict: the logits divided by the checkpoint's temperature; with test-time augmentation, the
        log of the views' mean probability (its softmax is that mean, its cross-entropy that mean's NLL)."""
        if self.tta is not None and self.multilabel:
            raise UserError("test-time augmentation averages single-label probabilities: use tta=none")
        if self.tta is not None:
            return mean_probabilities(self, images, self.tta, self.temperature).log()
        logits = self(images)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def _step(self, batch, batch_idx: int, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        targets = labels
        if stage == "train" and self.mixup is not None:  # soft targets; train/acc against the dominant label
            images, targets = self.mixup(images, labels)
            labels = targets.argmax(dim=1)
        logits = self.inference_logits(images) if stage == "test" else self(images)
        # Mixup's soft targets take the soft-target cross-entropy (without class weights)
        soft = targets.ndim == 2 and not self.multilabel
        label_criterion = self.soft_criterion if soft else self.criterion
        if self.distillation is None:
            loss = label_criterion(logits, targets)
        else:  # the teacher's term on top of the module's own label loss
            label_loss = lambda outputs: label_criterion(outputs, targets)  # noqa: E731
            loss, logits = self.distillation(self, stage, batch_idx, images, labels, logits, label_loss)
        mean_loss, metrics = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_metrics")
        # update() only: forward() would also compute a per-batch value that nothing logs
        mean_loss.update(loss.detach())
        if self.multilabel:
            metrics = self._update_multilabel_metrics(stage, logits.detach(), labels)
        else:
            # test: probabilities, as the calibration error takes logits for probabilities when all lie in [0, 1]
            metrics.update(logits.float().softmax(dim=-1) if stage == "test" else logits, labels)
        # each self.log call costs ~0.5 ms (a whole step of a small model on a GPU), so the step's loss is logged
        # on the steps the logger writes (Lightning's own test: every trainer.log_every_n_steps, or fast_dev_run)
        # and at each epoch's start, so that the progress bar shows one from the first step on
        if stage == "train" and (
            batch_idx == 0 or logger_writes_this_step(self.trainer) or self.trainer.fast_dev_run
        ):
            self.log("train/loss_step", progress_bar_value(loss), on_step=True, on_epoch=False, prog_bar=True)
        # Lightning computes (and resets) the logged metric objects at the epoch's end
        epoch_loss = {f"{stage}/loss" + ("_epoch" if stage == "train" else ""): mean_loss}
        self.epoch_metrics.log(
            self,
            stage,
            epoch_loss,
            *([metrics] if isinstance(metrics, MetricCollection) else metrics),
            prog_bar=True,
        )
        return loss, logits

    def label_thresholds(self) -> torch.Tensor:
        """Each label's threshold: `threshold` for all where set, else the fitted ones."""
        if self.threshold is not None:
            return torch.full_like(self.thresholds, float(self.threshold))
        return self.thresholds

    def _update_multilabel_metrics(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> list:
        probabilities, labels = torch.sigmoid(logits.float()), labels.int()
        ranking, thresholded = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_thresholded")
        if stage != "train":  # the training split's mAP would cost a sort of every epoch's probabilities
            ranking.update(probabilities, labels)
        thresholded.update(multilabel.shifted_probabilities(logits, self.label_thresholds()), labels)
        if stage == "val":
            self.val_probabilities.update(probabilities)
            self.val_targets.update(labels)
        return [thresholded] if stage == "train" else [ranking, thresholded]

    def training_step(self, batch, batch_idx):
        return self._step(batch, batch_idx, "train")[0]

    def validation_step(self, batch, batch_idx):
        self._step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        # the logits go to callbacks' on_test_batch_end (the report callback builds its tables from them)
        return self._step(batch, batch_idx, "test")[1]

    def predict_step(self, batch, batch_idx):
        """A labelled batch's logits as test_step sees them (temperature, test-time augmentation), with its labels:
        the out-of-fold predictions of k-fold, the validation logits a temperature is fitted to."""
        images, labels = batch
        return self.inference_logits(images), labels

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # class names travel with the weights, so predict needs no data set (a plain list: weights_only loads)
        names = getattr(self.trainer.datamodule, "class_names", None) or self.class_names
        if names:
            checkpoint["class_names"] = list(names)
        if self.multilabel:  # a plain list: weights_only loads
            checkpoint[multilabel.THRESHOLDS_KEY] = self.thresholds.tolist()
        # the eval transform as plain facts: src.predict then rebuilds it without Lightning (src/data/preprocessing.py)
        if hasattr(self.trainer.datamodule, "style"):
            checkpoint["preprocessing"] = preprocessing_facts(self.trainer.datamodule)
        # the checkpoint holds the trained weights: rebuilding it must not fetch or read pretrained ones
        backbone = checkpoint["hyper_parameters"]["backbone"]
        if backbone.get("pretrained") or backbone.get("weights_path"):
            checkpoint["hyper_parameters"]["backbone"] = {
                **backbone,
                "pretrained": False,
                **({"weights_path": None} if "weights_path" in backbone else {}),  # model=hf has none
            }

        if checkpoint["hyper_parameters"].get(
            "distill"
        ):  # the teacher only trains: eval and predict go without
            checkpoint["distilled_with"] = checkpoint["hyper_parameters"]["distill"]
            checkpoint["hyper_parameters"]["distill"] = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's, for a checkpoint file that src.train wrote and whose configs name only what
        src/runs/safe_config.py allows (building the module builds what they name); read memory-mapped first, so
        checking costs no full read of the weights."""
        read_checkpoint(checkpoint_path, how_to_pass="Pass ckpt_path=<run dir>/checkpoints/<file>.ckpt")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.class_names = checkpoint.get("class_names", [])
        self.temperature = float(checkpoint.get(TEMPERATURE_KEY, 1.0))
        if self.multilabel and multilabel.THRESHOLDS_KEY in checkpoint:
            self.thresholds = torch.tensor(checkpoint[multilabel.THRESHOLDS_KEY], dtype=torch.float32)

    def configure_optimizers(self):
        optimizer_cfg = dict(self.hparams.optimizer)
        optimizer_cfg["lr"] = self._batch_scaled_lr(
            optimizer_cfg["lr"],
            optimizer_cfg.pop("lr_scale", "none"),
            optimizer_cfg.pop("lr_base_size", None),
        )
        groups = optimizer_param_groups(
            self.backbone,
            optimizer_cfg.get("weight_decay", 0.0),
            optimizer_cfg["lr"],
            with_frozen_at_a_tenth=self.unfreeze_at_epoch is not None,
            layer_decay=optimizer_cfg.pop("layer_decay", None),  # the groups', not the optimizer's, setting
        )
        optimizer = instantiate(optimizer_cfg, **self._fused_kernel_choice())(params=groups)
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = build_lr_scheduler(
            self.hparams.scheduler["schedule"],
            optimizer,
            base_lr=optimizer_cfg["lr"],
            run_steps=lambda: int(self.trainer.estimated_stepping_batches),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler["interval"]},
        }

    def _batch_scaled_lr(self, lr: float, lr_scale: str, lr_base_size: int | None) -> float:
        """optimizer.lr, or with optimizer.lr_scale=linear|sqrt the lr of this run's global batch (timm's rule,
        src/training/optimizers.py), which the run log states."""
        if lr_scale == "none":
            return lr
        batch = effective_batch_size(self.trainer, self.hparams.data["batch_size"])
        scaled = scaled_lr(lr, lr_scale, lr_base_size, batch)
        if self.trainer.is_global_zero:
            log.info(
                "optimizer.lr_scale=%s: lr %.4g for a global batch of %d (optimizer.lr=%.4g at optimizer.lr_base_size="
                "%d; batch_size x devices x nodes x accumulate_grad_batches)",
                lr_scale, scaled, batch, lr, lr_base_size,
            )  # fmt: skip
        return scaled

    def _fused_kernel_choice(self) -> dict:
        """optimizer.fused, when the optimizer has the setting: null picks torch's fused kernel when the weights
        are on a GPU or a CPU (it has both; on CPU an AdamW step of the quickstart's ViT takes 0.8 ms instead of
        2.9)."""
        if "fused" not in self.hparams.optimizer:
            return {}
        fused = self.hparams.optimizer["fused"]
        return {"fused": self.device.type in ("cuda", "cpu") if fused is None else fused}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> ClassifierModule:
    """The model of a src.train checkpoint. A missing file, or one that is no such checkpoint, is the user's error
    (one line naming the file); an error while the model is built from a readable checkpoint is a bug, and keeps
    its traceback."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}. Pass ckpt_path=<run dir>/checkpoints/<file>.ckpt")
    return ClassifierModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
