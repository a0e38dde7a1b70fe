"""The DDP trainer's sync BatchNorm switch (its conversion, its refusal on CPU, and BatchNorm statistics of two real
CPU ranks) and the FSDP trainer: composed and built here (no GPU; the GPU runs belong to the GPU checks)."""

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import FSDPStrategy
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from src.models.vit import Block as ScratchBlock
from src.train import train
from tests.conftest import TINY_VIT, compose_config, run_cli

SYNCED = ["data=digits", "model=densenet121", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
          "trainer.sync_batchnorm=true", "callbacks=none", "logger=none"]  # fmt: skip


def test_ddp_sync_batchnorm_turns_a_cnns_batchnorm_into_syncbatchnorm(tmp_path):
    # Lightning's Trainer of the config (vitlab's build_trainer refuses it on CPU: the next test)
    trainer = instantiate(compose_config("train", SYNCED, tmp_path).trainer)
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)
    cnn = timm.create_model("densenet121", num_classes=10)
    # what DDPStrategy.setup does to the model in each of the 2 (gloo) processes
    synced = trainer.strategy._layer_sync.apply(cnn)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())


def test_sync_batchnorm_on_cpu_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train(compose_config("train", [*SYNCED, "model=vit", *TINY_VIT], tmp_path))
    assert exit_.value.code == 2
    assert "error: trainer.sync_batchnorm=true needs GPUs" in capsys.readouterr().err


def one_step_on_each_rank(rank: int, rendezvous: str, results) -> None:
    """Rank `rank` of 2 gloo processes: a conv + BatchNorm model, converted as trainer.sync_batchnorm=true converts
    it, then as it is, each on a batch of this rank's own (rank 1's images are shifted by 1)."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    images = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(rank)) + rank
    torch.manual_seed(0)
    synced = TorchSyncBatchNorm().apply(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    try:
        synced(images)
        refusal = None
    except ValueError as err:
        refusal = str(err)
    torch.manual_seed(0)
    ddp = DistributedDataParallel(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    ddp(images).sum().backward()  # a training step's forward and backward, as Lightning's DDP runs it
    bn = ddp.module[1]
    # lists, not tensors: a tensor would be shared memory of a process that may have ended when it is read
    results.put((rank, refusal, bn.running_mean.tolist(), bn.running_var.tolist()))
    dist.destroy_process_group()


@pytest.mark.slow  # two processes of their own (20-40 s on 2 busy CPU cores)
def test_batchnorm_statistics_of_two_cpu_ranks(tmp_path):
    context = mp.get_context("spawn")
    results = context.Queue()
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    ranks = [context.Process(target=one_step_on_each_rank, args=(r, rendezvous, results)) for r in range(2)]
    for process in ranks:
        process.start()
    found = dict((rank, rest) for rank, *rest in (results.get(timeout=120) for _ in ranks))
    for process in ranks:
        process.join(timeout=60)
    # torch refuses SyncBatchNorm on CPU, as vitlab's build_trainer says: when this fails, that refusal can go, and
    # this test can assert that the synced statistics are equal on both ranks and those of the union of the batches
    assert all("SyncBatchNorm expected input tensor to be on GPU" in found[rank][0] for rank in (0, 1))
    # without sync, each rank's statistics are those of its own batch (momentum 0.1 from mean 0, variance 1)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    for rank in (0, 1):
        with torch.no_grad():
            out = conv(torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(rank)) + rank)
        mean, var = map(torch.tensor, found[rank][1:])
        assert torch.allclose(mean, 0.1 * out.mean((0, 2, 3)), atol=1e-6)
        assert torch.allclose(var, 0.9 + 0.1 * out.var((0, 2, 3), unbiased=True), atol=1e-6)
    assert not torch.allclose(torch.tensor(found[0][1]), torch.tensor(found[1][1]), atol=1e-3)


def test_fsdp_trainer_wraps_each_transformer_block(tmp_path):
    cfg = compose_config("train", ["data=digits", "trainer=fsdp", "callbacks=none", "logger=none"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {Block, ScratchBlock}
    result = run_cli("src.train", "trainer=fsdp", "model=vit_timm", "--cfg", "job", timeout=120)
    assert result.returncode == 0 and "FSDPStrategy" in result.stdout, result.stderr[-2000:]
