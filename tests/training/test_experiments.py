"""Every experiment composes, builds its data, model, trainer and callbacks, and trains one step.
Pretrained weights cannot be downloaded here, so models start from random weights; inputs above 72 px are
shrunk to 32 px (ViT-B/16 then sees 2x2 patches), which changes no parameter count but the position grid."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from src.runs.safe_config import MODULE_KEYS
from src.training.trainer import build_trainer
from tests.cli.test_configs import options
from tests.conftest import compose_config


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_builds_and_trains_a_step(experiment, tmp_path, digits_png):
    cfg = compose_config("train", [f"experiment={experiment}", f"paths.data_dir={digits_png}"], tmp_path)
    assert cfg.task_name == experiment or experiment == "quickstart"
    if cfg.model.get("pretrained"):
        cfg.model.pretrained = False
    if cfg.data.image_size > 72:
        cfg.data.image_size = 32
    if (
        cfg.distill.mode != "none"
    ):  # its teacher is a checkpoint to pass; tests/training/test_distillation.py trains with one
        cfg.distill = {"mode": "none"}
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    assert isinstance(build_trainer(cfg), L.Trainer)
    module = instantiate(cfg.module).train()
    trainable = [p for p in module.parameters() if p.requires_grad]
    # layer_decay and the lr's scaling shape the module's parameter groups, and are no arguments of the optimizer
    optimizer = instantiate({k: v for k, v in cfg.optimizer.items() if k not in MODULE_KEYS["optimizer"]})(
        params=trainable
    )
    images = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size)
    loss = module.criterion(module(images), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in trainable)
