"""The fast paths of a training run: bf16 autocast, torch.compile, fused optimizers, and no GPU sync in steps that
log nothing."""

import warnings

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

import src.training.module
from src.bench import workload
from src.train import train
from src.training.nonfinite import NonFiniteLossGuard
from tests.conftest import QUICK, TINY_VIT, compose_config


def test_bf16_mixed_trains_tests_and_reports(tmp_path):
    """The bf16 autocast path of trainer=gpu, run with torch's CPU autocast: bf16 logits reach the metrics and
    the report, the checkpoint keeps float32 weights."""
    cfg = compose_config(
        "train",
        ["data=digits", "trainer.precision=bf16-mixed", "data.loader=gpu", *TINY_VIT, *QUICK,
         "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert 0 < metrics["test/loss"] < 10 and 0 <= metrics["test/acc"] <= 1
    assert "| accuracy |" in (tmp_path / "report.md").read_text()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert {tensor.dtype for tensor in checkpoint["state_dict"].values()} == {torch.float32}


def test_compile_and_bf16_configs_compose(tmp_path):
    cfg = compose_config("train", ["trainer=gpu", "model.compile=true", "model.channels_last=true"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    module = instantiate(cfg.module)
    assert module.backbone._compiled_call_impl is not None  # compiled in place: state_dict keys unchanged
    assert not any(key.startswith("backbone._orig_mod") for key in module.state_dict())


@pytest.mark.parametrize(
    ("fused", "device", "expected"),
    [("null", "cpu", True), ("null", "cuda:0", True), ("false", "cpu", False)],
)
def test_fused_optimizer_setting(fused, device, expected, tmp_path, monkeypatch):
    cfg = compose_config(
        "train", ["data=digits", "scheduler=none", *TINY_VIT, f"optimizer.fused={fused}"], tmp_path
    )
    module = instantiate(cfg.module)
    built = []
    # the optimizer as built for weights on `device` (building a fused one for CUDA tensors needs a GPU)
    monkeypatch.setattr(
        src.training.module,
        "instantiate",
        lambda config, **kwargs: built.append(kwargs) or instantiate(config),
    )
    module._device = torch.device(device)  # what .to(device) sets
    optimizer = module.configure_optimizers()
    assert built == [{"fused": expected}]
    if device == "cpu":  # and for CPU weights, the real thing (torch has a fused CPU kernel too)
        module._device = torch.device("cpu")
        monkeypatch.undo()
        assert bool(module.configure_optimizers().defaults["fused"]) is expected
    assert isinstance(optimizer, torch.optim.AdamW)


@pytest.mark.slow  # torch.compile builds C++ kernels with gcc on a CPU: tens of seconds
def test_compiled_backbone_trains_and_checkpoints_like_the_eager_one(tmp_path):
    cfg = compose_config(
        "train",
        ["data=digits", *TINY_VIT, *QUICK, "model.compile=true", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "test=false"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["train/loss_epoch"] > 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.py runs it there)"
)
def test_a_training_step_that_logs_nothing_does_not_wait_for_the_gpu(tmp_path):
    """Between the steps the loggers write, `Trainer.fit` of the ClassifierModule (with the non-finite loss guard)
    reads nothing off the GPU, as a hand-written loop does not: each read waits for all the work queued so far.
    Lightning turned the progress bar's step loss into a number after every step (upstream_fixes.lightning
    `progress_bar_value`)."""
    cfg = workload.model_config("vit", 16, "cuda", TINY_VIT)
    images, labels = workload.synthetic(40 * 8)
    loader = workload.gpu_batches(images, labels, 8, 16, "cuda")

    class CountSyncs(L.Callback):  # torch's sync debug mode warns at each read; steps 2..29 log nothing
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx in (2, 30):
                torch.cuda.set_sync_debug_mode("warn" if batch_idx == 2 else "default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = workload.bench_trainer(
            cfg,
            "cuda",
            str(tmp_path),
            CountSyncs(),
            NonFiniteLossGuard(),
            max_epochs=1,
            log_every_n_steps=1000,
        )
        trainer.fit(workload.build_module(cfg), train_dataloaders=loader)
    torch.cuda.set_sync_debug_mode("default")
    syncs = [str(warning.message) for warning in caught if "synchroniz" in str(warning.message)]
    assert trainer.global_step == 40
    assert syncs == [], f"{len(syncs)} GPU syncs in 28 steps, the first: {syncs[:1]}"
