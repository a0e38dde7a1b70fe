"""Knowledge distillation (conf/distill/): a frozen teacher adds its term to the student's training loss.

A distilled DeiT (two heads) gets token distillation as in Touvron et al. 2021 (eq. 3, deit `losses.py`): the class
head learns from the label, the distillation head from the teacher; any other student gets logit distillation
(Hinton et al. 2015): the one output learns from both. `mode`: hard (cross-entropy against the teacher's argmax)
or soft (KL divergence at `temperature`, times temperature²); the loss is (1 - alpha) · label loss + alpha ·
teacher term, as in deit's `DistillationLoss` and timm's `TokenDistillationTask` / `LogitDistillationTask` with
`task_loss_weight = 1 - alpha` (tests/training/test_distillation.py checks both against timm on fixed logits). timm's tasks
own the student's forward pass and criterion; here the module keeps both (whatever label loss it computes, e.g.
Mixup's soft targets, stays its own), so only the teacher term is added here, around timm's `DistillationTeacher`.

The teacher sees the student's (augmented) batch as it was trained to see images: un-normalised with the student's
mean/std, resized to its own input size and normalised with its own mean/std (timm's `normalize_input`). A 32 px
CNN teacher of a 224 px DeiT student thus gets the 224 px batch shrunk back to 32 px (antialiased). It is kept out
of the LightningModule's modules, so it is in no checkpoint, no parameter count and no DDP bucket; every process
builds its own when it builds the module, and moves it to the batch's device and dtype on first use.
"""

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.task import DistillationTeacher
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from src.errors import UserError
from src.models.timm_models import create_timm_model

log = logging.getLogger(__name__)

MODES = ("none", "hard", "soft")


class _Resized(nn.Module):
    """The teacher behind a resize to its own input size (a no-op when the batch already has it)."""

    def __init__(self, model: nn.Module, size: int, interpolation: str):
        super().__init__()
        self.model, self.size, self.interpolation = model, size, interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            smooth = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, antialias=smooth)
        return self.model(x)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, mode: str, temperature: float
) -> torch.Tensor:
    """The teacher term on one head's logits: timm's TokenDistillationTask / LogitDistillationTask formulas."""
    if mode == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    # batchmean, as timm and the KD literature; deit's losses.py divides by numel (deit issue #61)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _load_teacher_checkpoint(
    path: str, num_classes: int, load_checkpoint: Callable[[Path], nn.Module]
) -> tuple[nn.Module, dict, list[str]]:
    if not Path(path).expanduser().is_file():
        raise UserError(
            f"distill.teacher_ckpt={path} is not a file: pass a checkpoint that src.train wrote for this data set "
            "(<run dir>/checkpoints/<file>.ckpt)"
        )
    try:
        teacher = load_checkpoint(Path(path).expanduser())
    except UserError as err:
        raise UserError(f"distill.teacher_ckpt: {err}") from err
    data = teacher.hparams.get("data") or {}
    if teacher.hparams.num_classes != num_classes:
        raise UserError(
            f"distill.teacher_ckpt={path} predicts {teacher.hparams.num_classes} classes "
            f"({data.get('_target_', 'unknown data')}), the student's data {num_classes}: a teacher must be "
            "trained on the student's data set (python -m src.train data=<the same> ...)"
        )
    return teacher.backbone, data, list(teacher.class_names)


def _timm_teacher(
    name: str, pretrained: bool, weights_path: str | None, num_classes: int
) -> DistillationTeacher:
    if weights_path:
        if not Path(weights_path).expanduser().is_file():
            raise UserError(
                f"distill.weights_path={weights_path} is not a file; give a .safetensors/.pth/.bin file"
            )
        try:  # timm's way: the file's classifier is kept when it has num_classes outputs
            return DistillationTeacher(name, num_classes=num_classes, pretrained_path=str(weights_path))
        except RuntimeError as err:  # load_state_dict's size mismatch: another class count
            raise UserError(
                f"distill.weights_path={weights_path} does not hold {name} weights for {num_classes} classes "
                f"({str(err).splitlines()[0][:200]}): the teacher must predict the student's classes"
            ) from err
    if not pretrained:
        raise UserError(
            f"distill.teacher={name} without distill.pretrained=true or distill.weights_path=<file> has random "
            "weights and teaches nothing"
        )
    model = create_timm_model(name, pretrained=True, setting="distill")
    if model.num_classes != num_classes:
        raise UserError(
            f"distill.teacher={name}'s pretrained weights predict {model.num_classes} classes, the student's data "
            f"{num_classes}: pass distill.weights_path=<its weights for these classes>, or "
            "distill.teacher_ckpt=<a src.train checkpoint of this data set>"
        )
    return DistillationTeacher(model)


class Distillation(nn.Module):
    """The teacher's term and the metrics that show it (`acc_cls`, `acc_dist`, `teacher_agreement`,
    `teacher_acc` per stage). Only the metrics are this module's children (their states are not saved);
    the teacher is a plain attribute, out of the module tree. `load_checkpoint` reads a src.train checkpoint
    (distill.teacher_ckpt): the module hands over its own, so this file needs no import of the module."""

    def __init__(
        self,
        student: nn.Module,
        num_classes: int,
        student_data: dict,
        load_checkpoint: Callable[[Path], nn.Module],
        mode: str = "hard",
        alpha: float = 0.5,
        temperature: float = 1.0,
        teacher_ckpt: str | None = None,
        teacher: str | None = None,
        pretrained: bool = False,
        weights_path: str | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        if mode not in ("hard", "soft"):
            raise UserError(f"distill.mode={mode!r}: use distill=none, distill=hard or distill=soft")
        if not 0 <= alpha <= 1:
            raise UserError(f"distill.alpha={alpha}: the teacher's weight in the loss lies in [0, 1]")
        if temperature <= 0:
            raise UserError(f"distill.temperature={temperature}: must be > 0")
        if bool(teacher_ckpt) == bool(teacher):
            raise UserError(
                "distill=hard|soft needs one teacher: distill.teacher_ckpt=<a src.train checkpoint> or "
                "distill.teacher=<timm model name> (with distill.pretrained=true or distill.weights_path=<file>)"
            )
        self.mode, self.alpha, self.temperature = mode, alpha, temperature
        self.teacher_classes: list[str] = []
        if teacher_ckpt:
            model, data, self.teacher_classes = _load_teacher_checkpoint(
                teacher_ckpt, num_classes, load_checkpoint
            )
            self.teacher_name = f"distill.teacher_ckpt={teacher_ckpt}"
            mean, std = data["mean"], data["std"]
            size, interpolation = data["image_size"], data.get("interpolation", "bilinear")
        else:
            wrapped = _timm_teacher(teacher, pretrained, weights_path, num_classes)
            model, cfg = wrapped.model, wrapped.model.pretrained_cfg
            self.teacher_name = f"distill.teacher={teacher}"
            mean, std = cfg["mean"], cfg["std"]
            size, interpolation = cfg["input_size"][-1], cfg.get("interpolation", "bicubic")
        model.requires_grad_(False)
        wrapped = DistillationTeacher(_Resized(model, image_size or size, interpolation)).eval()
        wrapped.mean_kd.copy_(torch.tensor(mean).view(1, -1, 1, 1))
        wrapped.std_kd.copy_(torch.tensor(std).view(1, -1, 1, 1))
        # not an attribute nn.Module registers: the teacher stays out of state_dict, .to() and DDP
        self.__dict__["teacher"] = wrapped
        self.register_buffer(
            "student_mean", torch.tensor(student_data["mean"]).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "student_std", torch.tensor(student_data["std"]).view(1, -1, 1, 1), persistent=False
        )
        # a distilled DeiT: the class head learns from labels, the distillation head from the teacher
        self.two_heads = hasattr(student, "set_distilled_training")
        self._heads: dict[str, torch.Tensor] = {}
        if self.two_heads:
            student.set_distilled_training(True)  # timm then returns (class, distillation) logits in training
            # in eval timm returns the heads' average; these hooks keep each head's logits for acc_cls/acc_dist
            for name in ("head", "head_dist"):
                getattr(student, name).register_forward_hook(self._keep(name))
        self._classes_checked = False

        def metrics(prefix: str) -> MetricCollection:
            names = ["teacher_agreement", "teacher_acc"] + (["acc_cls", "acc_dist"] if self.two_heads else [])
            accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
            return MetricCollection({name: accuracy.clone() for name in names}, prefix=prefix)

        self.metrics = nn.ModuleDict({stage: metrics(f"{stage}/") for stage in ("val", "test")})

    def _keep(self, name: str):
        def hook(head, inputs, output):
            if not head.training:  # only eval reads them; a training step's would keep its graph alive
                self._heads[name] = output

        return hook

    def check_classes(self, class_names: list[str]) -> None:
        """A teacher of another data set with as many classes: its class names differ from the student's."""
        if self._classes_checked or not self.teacher_classes or not class_names:
            return
        if list(class_names) != self.teacher_classes:
            raise UserError(
                f"{self.teacher_name} was trained on classes {self.teacher_classes[:5]}..., the student's data has "
                f"{list(class_names)[:5]}...: a teacher must be trained on the student's data set"
            )
        self._classes_checked = True

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher
        # the run's device, and its dtype under true half precision (autocast handles mixed precision)
        dtype = images.dtype if images.is_floating_point() else teacher.mean_kd.dtype
        if teacher.mean_kd.device != images.device or teacher.mean_kd.dtype != dtype:
            teacher.to(device=images.device, dtype=dtype)
        inputs = teacher.normalize_input(images, self.student_mean.to(images), self.student_std.to(images))
        return teacher(inputs).float()

    def forward(
        self,
        module,
        stage: str,
        batch_idx: int,
        images: torch.Tensor,
        labels: torch.Tensor,
        outputs,
        label_loss,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's loss and the logits its metrics see. `outputs`: the student's (a (class, distillation)
        pair for a distilled DeiT in training); `label_loss(logits)`: the module's own loss on its targets (the
        teacher term composes with any criterion); `module`: the LightningModule that logs the metrics."""
        if module is not None and module._trainer is not None:
            self.check_classes(getattr(module.trainer.datamodule, "class_names", None) or [])
        teacher = self.teacher_logits(images)
        if stage == "train":
            logits, taught = outputs if isinstance(outputs, tuple) else (outputs, outputs)
            term = distillation_loss(taught, teacher, self.mode, self.temperature)
            loss = (1 - self.alpha) * label_loss(logits) + self.alpha * term
            # the metrics see what eval predicts: the heads' average
            return loss, (logits + taught) / 2 if isinstance(outputs, tuple) else logits
        metrics = self.metrics[stage]
        metrics["teacher_agreement"].update(outputs, teacher.argmax(dim=-1))
        metrics["teacher_acc"].update(teacher, labels)
        if self.two_heads:
            metrics["acc_cls"].update(self._heads["head"], labels)
            metrics["acc_dist"].update(self._heads["head_dist"], labels)
        if (
            batch_idx == 0
        ):  # a logged metric is Lightning's to compute and reset at the epoch's end: once is enough
            module.log_dict(metrics, on_step=False, on_epoch=True)
        return label_loss(outputs), outputs
