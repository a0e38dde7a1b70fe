"""Distillation (conf/distill/, src/training/distillation.py): the loss is timm's (and DeiT's), the distillation head learns
from the teacher only, the teacher stays frozen and out of checkpoints, agreement and the errors users see."""

import hashlib
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timm.task import LogitDistillationTask, TokenDistillationTask

from src.errors import UserError
from src.training.distillation import Distillation
from src.training.module import ClassifierModule, load_checkpoint
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli, run_dirs

DIGITS = [str(d) for d in range(10)]
FEW_BATCHES = [
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
]


def write_teacher(
    path: Path, tmp_path: Path, class_names=DIGITS, seed: int = 0, num_classes: int = 10
) -> Path:
    """A src.train checkpoint of a tiny scratch ViT on digits (untrained weights from `seed`), as
    ModelCheckpoint writes it: what distill.teacher_ckpt reads."""
    cfg = compose_config("train", ["data=digits", *TINY_VIT, f"data.num_classes={num_classes}"], tmp_path)
    torch.manual_seed(seed)
    module = instantiate(cfg.module)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
        "class_names": list(class_names),
    }
    torch.save(checkpoint, path)
    return path


def tiny_deit(num_classes: int = 10) -> torch.nn.Module:
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
        num_classes=num_classes,
    )  # fmt: skip


def distillation(tmp_path, student, seed: int = 0, **settings) -> Distillation:
    teacher = write_teacher(tmp_path / f"teacher{seed}.ckpt", tmp_path, seed=seed)
    data = {"mean": [0.5] * 3, "std": [0.5] * 3}
    return Distillation(student, 10, data, load_checkpoint, teacher_ckpt=str(teacher), **settings)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_token_distillation_loss_is_timms_and_deits(mode, tmp_path):
    torch.manual_seed(0)
    student = tiny_deit()
    distill = distillation(tmp_path, student, mode=mode, alpha=0.5, temperature=2.0)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    student.train()
    outputs = student(images)
    loss, _ = distill(None, "train", 0, images, labels, outputs, lambda out: F.cross_entropy(out, labels))

    # timm's task on the same student, teacher and normalisation (ours: the teacher is fed un-normalised,
    # resized and re-normalised inputs; timm's task gets the same teacher wrapper)
    task = TokenDistillationTask(
        student, distill.teacher, criterion=torch.nn.CrossEntropyLoss(), distill_type=mode,
        task_loss_weight=0.5, temperature=2.0, verbose=False,
    )  # fmt: skip
    task.student_mean.copy_(distill.student_mean)
    task.student_std.copy_(distill.student_std)
    torch.testing.assert_close(loss, task(images, labels)["loss"])
    if mode == "hard":  # DeiT eq. 3: ½ CE(class head, y) + ½ CE(distillation head, teacher's argmax)
        teacher_labels = distill.teacher_logits(images).argmax(-1)
        paper = 0.5 * F.cross_entropy(outputs[0], labels) + 0.5 * F.cross_entropy(outputs[1], teacher_labels)
        torch.testing.assert_close(loss, paper)


def test_logit_distillation_loss_is_timms_for_a_one_head_student(tmp_path):
    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=10)
    distill = distillation(tmp_path, student, mode="soft", alpha=0.3, temperature=4.0)
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    student.eval()  # BatchNorm's batch statistics must not differ between the two forward passes
    outputs = student(images)
    loss, _ = distill(None, "train", 0, images, labels, outputs, lambda out: F.cross_entropy(out, labels))
    task = LogitDistillationTask(
        student, distill.teacher, criterion=torch.nn.CrossEntropyLoss(), task_loss_weight=0.7, temperature=4.0,
        verbose=False,
    )  # fmt: skip
    task.student_mean.copy_(distill.student_mean)
    task.student_std.copy_(distill.student_std)
    torch.testing.assert_close(loss, task(images, labels)["loss"])


def test_distillation_head_learns_from_the_teacher_only(tmp_path):
    images = torch.randn(8, 3, 16, 16)

    def head_gradients(labels, teacher_seed):
        torch.manual_seed(0)
        student = tiny_deit().train()
        distill = distillation(tmp_path, student, seed=teacher_seed, mode="hard")
        outputs = student(images)
        loss, _ = distill(None, "train", 0, images, labels, outputs, lambda out: F.cross_entropy(out, labels))
        loss.backward()
        return student.head_dist.weight.grad.clone(), student.head.weight.grad.clone()

    labels = torch.randint(0, 10, (8,))
    dist, cls = head_gradients(labels, teacher_seed=0)
    other_dist, other_cls = head_gradients((labels + 1) % 10, teacher_seed=0)
    torch.testing.assert_close(other_dist, dist)  # other labels: the same distillation-head gradient
    assert not torch.allclose(other_cls, cls)  # while the class head follows the labels
    teacher_dist, teacher_cls = head_gradients(labels, teacher_seed=1)
    assert not torch.allclose(teacher_dist, dist)  # another teacher: another distillation-head gradient
    torch.testing.assert_close(teacher_cls, cls)


def test_teacher_gets_the_batch_at_its_own_size_and_normalisation(tmp_path):
    """Student batches at 32 px normalised with mean = std = 0.5; the teacher (trained at digits' 16 px with
    digits' mean/std) sees them shrunk to 16 px and normalised its way."""
    teacher_path = write_teacher(tmp_path / "t.ckpt", tmp_path)
    data = {"mean": [0.5] * 3, "std": [0.5] * 3}
    distill = Distillation(
        torch.nn.Identity(), 10, data, load_checkpoint, mode="hard", teacher_ckpt=str(teacher_path)
    )
    seen = []
    distill.teacher.model.model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    pixels = torch.rand(2, 3, 32, 32)
    distill.teacher_logits((pixels - 0.5) / 0.5)
    teacher_data = torch.load(teacher_path, weights_only=True)["hyper_parameters"]["data"]
    mean, std = (torch.tensor(teacher_data[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = (F.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True) - mean) / std
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)


def test_agreement_is_one_when_student_and_teacher_are_the_same_network(tmp_path):
    teacher_path = write_teacher(tmp_path / "same.ckpt", tmp_path)
    cfg = compose_config("train", ["data=digits", *TINY_VIT, "distill=hard", *QUICK], tmp_path)
    cfg.module.distill.teacher_ckpt = str(teacher_path)
    module = instantiate(cfg.module)
    module.load_state_dict(torch.load(teacher_path, weights_only=True)["state_dict"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=2)
    (metrics,) = trainer.validate(module, datamodule=instantiate(cfg.data), verbose=False)
    assert metrics["val/teacher_agreement"] == 1.0
    assert metrics["val/teacher_acc"] == pytest.approx(metrics["val/acc"])


def test_teacher_is_frozen_and_kept_out_of_the_module(tmp_path):
    torch.manual_seed(0)
    student = tiny_deit()
    distill = distillation(tmp_path, student, mode="hard")
    before = {k: v.clone() for k, v in distill.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(2):
        student.train()
        outputs = student(images)
        loss, _ = distill(None, "train", 0, images, labels, outputs, lambda out: F.cross_entropy(out, labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not any(m.training for m in distill.teacher.modules()) and not any(
        p.requires_grad for p in distill.teacher.parameters()
    )
    for key, value in distill.teacher.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert list(distill.parameters()) == []  # the teacher is no child: no optimizer, DDP or count sees it
    assert list(distill.state_dict()) == []  # nothing of distillation's is saved


@pytest.mark.slow
def test_distilled_run_resumes_and_its_checkpoints_need_no_teacher(tmp_path):
    teacher = write_teacher(tmp_path / "teacher.ckpt", tmp_path)
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    common = [
        "data=digits", "model=deit_tiny", "data.image_size=16", "model.patch_size=8", "distill=hard",
        f"distill.teacher_ckpt={teacher}", *QUICK, *FEW_BATCHES, f"paths.log_dir={tmp_path / 'logs'}",
    ]  # fmt: skip
    first = run_cli("src.train", *common, "test=false")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli("src.train", *common, "trainer.max_epochs=2", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr + resumed.stdout
    run = run_dirs(tmp_path / "logs", "train")[-1]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 4)  # the second epoch, 2 batches each
    assert (
        checkpoint["hyper_parameters"]["distill"] is None and checkpoint["distilled_with"]["mode"] == "hard"
    )
    state = torch.load(teacher, weights_only=True)["state_dict"]
    assert len(checkpoint["state_dict"]) == len(
        ClassifierModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").state_dict()
    )
    assert not set(checkpoint["state_dict"]) & {f"distillation.teacher.{k}" for k in state}
    assert hashlib.sha256(teacher.read_bytes()).hexdigest() == digest
    teacher.unlink()  # eval and predict never need the teacher
    evaluated = run_cli("src.eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.accelerator=cpu",
                        f"paths.log_dir={tmp_path / 'logs'}")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_every_rank_its_teacher(tmp_path):
    teacher = write_teacher(tmp_path / "teacher.ckpt", tmp_path)
    result = run_cli(
        "src.train", "data=digits", *TINY_VIT, "trainer=ddp", "trainer.devices=2", "distill=soft",
        f"distill.teacher_ckpt={teacher}", *QUICK, *FEW_BATCHES, f"paths.log_dir={tmp_path / 'logs'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/teacher_agreement" in result.stdout


@pytest.mark.slow
def test_missing_teacher_checkpoint_is_one_error_line(tmp_path):
    result = run_cli(
        "src.train", "data=digits", *TINY_VIT, "distill=hard", f"distill.teacher_ckpt={tmp_path / 'none.ckpt'}",
        *QUICK, f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: distill.teacher_ckpt={tmp_path / 'none.ckpt'} is not a file" in result.stderr


def test_teacher_of_another_class_count_names_both(tmp_path):
    teacher = write_teacher(
        tmp_path / "t.ckpt", tmp_path, class_names=[str(i) for i in range(5)], num_classes=5
    )
    with pytest.raises(UserError, match=r"predicts 5 classes .* the student's data 10"):
        Distillation(
            torch.nn.Identity(),
            10,
            {"mean": [0.5] * 3, "std": [0.5] * 3},
            load_checkpoint,
            teacher_ckpt=str(teacher),
        )


def test_teacher_of_another_data_set_with_as_many_classes_names_both(tmp_path):
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    teacher = write_teacher(tmp_path / "t.ckpt", tmp_path, class_names=cifar)
    distill = Distillation(
        torch.nn.Identity(),
        10,
        {"mean": [0.5] * 3, "std": [0.5] * 3},
        load_checkpoint,
        teacher_ckpt=str(teacher),
    )
    with pytest.raises(UserError, match=r"trained on classes \['airplane'.*the student's data has \['0'"):
        distill.check_classes(DIGITS)
    distill.check_classes(cifar)  # the same classes pass


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "needs one teacher"),
        ({"teacher_ckpt": "a.ckpt", "teacher": "resnet18"}, "needs one teacher"),
        ({"teacher": "resnet18"}, "has random weights and teaches nothing"),
        ({"teacher": "resnet18", "weights_path": "missing.safetensors"}, "distill.weights_path=missing"),
        ({"teacher": "resnet18", "alpha": 1.5}, r"distill.alpha=1.5"),
        ({"teacher": "resnet18", "mode": "medium"}, "distill.mode='medium'"),
    ],
)
def test_bad_settings_are_user_errors(settings, message):
    with pytest.raises(UserError, match=message):
        Distillation(
            torch.nn.Identity(), 10, {"mean": [0.5] * 3, "std": [0.5] * 3}, load_checkpoint, **settings
        )


def test_timm_teacher_offline_gives_the_models_error_naming_distill(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(
        UserError, match=r"distill.pretrained=true cannot get the weights of resnet18.*distill.weights_path"
    ):
        Distillation(
            torch.nn.Identity(),
            10,
            {"mean": [0.5] * 3, "std": [0.5] * 3},
            load_checkpoint,
            teacher="resnet18",
            pretrained=True,
        )


def test_timm_teacher_with_weights_of_another_class_count_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet10t", num_classes=5).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(UserError, match="does not hold resnet10t weights for 10 classes"):
        Distillation(torch.nn.Identity(), 10, {"mean": [0.5] * 3, "std": [0.5] * 3}, load_checkpoint, teacher="resnet10t",
                     weights_path=str(tmp_path / "w.safetensors"))  # fmt: skip


def test_timm_teacher_from_a_weights_file_uses_its_own_input_settings(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", num_classes=10).eval()
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    distill = Distillation(torch.nn.Identity(), 10, {"mean": [0.5] * 3, "std": [0.5] * 3}, load_checkpoint, teacher="resnet10t",
                           weights_path=str(tmp_path / "w.safetensors"), image_size=32)  # fmt: skip
    pixels = torch.rand(2, 3, 32, 32)
    imagenet = timm.data.resolve_data_config({}, model=reference)
    mean, std = (torch.tensor(imagenet[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(distill.teacher_logits((pixels - 0.5) / 0.5), reference((pixels - mean) / std))


def test_distill_group_composes_for_every_mode(tmp_path):
    for mode in ("none", "hard", "soft"):
        cfg = compose_config("train", ["data=digits", f"distill={mode}"], tmp_path)
        assert OmegaConf.to_container(cfg.module.distill)["mode"] == mode
