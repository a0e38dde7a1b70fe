"""The DDP trainer's sync BatchNorm switch (its conversion, its refusal on CPU, the BatchNorm statistics of two real
ranks: CPU ones here, GPU ones where 2 GPUs exist) and the FSDP trainer: composed and built here."""

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


def test_fsdp_on_cpu_is_one_error_line(tmp_path, capsys):
    overrides = [
        "data=digits",
        "trainer=fsdp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32",
    ]
    with pytest.raises(SystemExit) as exit_:
        train(compose_config("train", [*overrides, "callbacks=none", "logger=none", *TINY_VIT], tmp_path))
    assert exit_.value.code == 2
    assert "error: trainer=fsdp needs GPUs" in capsys.readouterr().err


def rank_images(rank: int) -> torch.Tensor:
    """Rank `rank`'s batch: its own images (rank 1's are shifted by 1, so the ranks' statistics differ)."""
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(rank)) + rank


def one_step_on_each_rank(rank: int, rendezvous: str, device: str, results) -> None:
    """Rank `rank` of 2 processes (gloo on CPU, NCCL on GPU `rank`): a conv + BatchNorm model, converted as
    trainer.sync_batchnorm=true converts it, then as it is, each a training step's forward and backward under DDP
    (as Lightning's DDP runs it) on this rank's own batch."""
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", init_method=rendezvous, rank=rank, world_size=2
    )
    images = rank_images(rank).to(device)
    found = {"refusal": None}
    for name, layer_sync in (("synced", TorchSyncBatchNorm()), ("own", None)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        model = (layer_sync.apply(model) if layer_sync else model).to(device)
        try:
            ddp = DistributedDataParallel(model, device_ids=[rank] if device == "cuda" else None)
            ddp(images).sum().backward()
        except ValueError as err:
            found["refusal"] = str(err)
            continue
        # lists, not tensors: a tensor would be shared memory of a process that may have ended when it is read
        found[name] = (model[1].running_mean.tolist(), model[1].running_var.tolist())
    results.put((rank, found))
    dist.destroy_process_group()


def statistics_of_two_ranks(tmp_path, device: str) -> dict[int, dict]:
    context = mp.get_context("spawn")
    results = context.Queue()
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    ranks = [
        context.Process(target=one_step_on_each_rank, args=(r, rendezvous, device, results)) for r in range(2)
    ]
    for process in ranks:
        process.start()
    found = dict(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    return found


def expected_statistics(*ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's running mean and variance after one step (momentum 0.1 from mean 0, variance 1) on the batches
    of `ranks` together."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        out = conv(torch.cat([rank_images(rank) for rank in ranks]))
    return 0.1 * out.mean((0, 2, 3)), 0.9 + 0.1 * out.var((0, 2, 3), unbiased=True)


def assert_statistics(found: tuple[list, list], ranks: tuple[int, ...]) -> None:
    mean, var = expected_statistics(*ranks)
    assert torch.allclose(torch.tensor(found[0]), mean, atol=1e-5)
    assert torch.allclose(torch.tensor(found[1]), var, atol=1e-5)


@pytest.mark.slow  # two processes of their own (20-40 s on 2 busy CPU cores)
def test_batchnorm_statistics_of_two_cpu_ranks(tmp_path):
    found = statistics_of_two_ranks(tmp_path, "cpu")
    # torch's DDP refuses SyncBatchNorm on CPU (torch has no CPU kernels for its batch statistics), as vitlab's build_trainer
    # says: when this fails, that refusal can go, and test_synced_batchnorm_statistics_of_two_gpu_ranks runs here
    assert all("SyncBatchNorm layers only work with GPU" in found[rank]["refusal"] for rank in (0, 1))
    # without sync, each rank's statistics are those of its own batch
    for rank in (0, 1):
        assert_statistics(found[rank]["own"], (rank,))
    assert not torch.allclose(torch.tensor(found[0]["own"][0]), torch.tensor(found[1]["own"][0]), atol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="synced BatchNorm needs 2 GPUs (torch runs it on GPUs only)"
)
def test_synced_batchnorm_statistics_of_two_gpu_ranks(tmp_path):
    found = statistics_of_two_ranks(tmp_path, "cuda")
    # synced: both ranks hold the statistics of the union of their batches; not synced: each its own batch's
    for rank in (0, 1):
        assert found[rank]["refusal"] is None
        assert_statistics(found[rank]["synced"], (0, 1))
        assert_statistics(found[rank]["own"], (rank,))


def test_fsdp_trainer_wraps_each_transformer_block(tmp_path):
    cfg = compose_config("train", ["data=digits", "trainer=fsdp", "callbacks=none", "logger=none"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {Block, ScratchBlock}
    result = run_cli("src.train", "trainer=fsdp", "model=vit_timm", "--cfg", "job", timeout=120)
    assert result.returncode == 0 and "FSDPStrategy" in result.stdout, result.stderr[-2000:]
