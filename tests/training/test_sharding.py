"""The DDP trainer's sync BatchNorm switch and the FSDP trainer: composed and built here (no GPU; FSDP's GPU run
belongs to the GPU checks)."""

import timm
from hydra.utils import instantiate
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import FSDPStrategy
from timm.models.vision_transformer import Block
from torch import nn

from src.models.vit import Block as ScratchBlock
from src.training.trainer import build_trainer
from tests.conftest import compose_config, run_cli


def test_ddp_sync_batchnorm_turns_a_cnns_batchnorm_into_syncbatchnorm(tmp_path):
    cfg = compose_config(
        "train",
        ["data=digits", "model=densenet121", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
         "trainer.sync_batchnorm=true", "callbacks=none", "logger=none"],
        tmp_path,
    )  # fmt: skip
    trainer = build_trainer(cfg)
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)
    cnn = timm.create_model("densenet121", num_classes=10)
    # what DDPStrategy.setup does to the model in each of the 2 (gloo) processes
    synced = trainer.strategy._layer_sync.apply(cnn)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())


def test_fsdp_trainer_wraps_each_transformer_block(tmp_path):
    cfg = compose_config("train", ["data=digits", "trainer=fsdp", "callbacks=none", "logger=none"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {Block, ScratchBlock}
    result = run_cli("src.train", "trainer=fsdp", "model=vit_timm", "--cfg", "job", timeout=120)
    assert result.returncode == 0 and "FSDPStrategy" in result.stdout, result.stderr[-2000:]
