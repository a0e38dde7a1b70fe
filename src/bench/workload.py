"""What every measurement runs: a conf/model config as src.train composes it, its module, synthetic CIFAR-shaped
data, and the Trainer (src/training/trainer.py's `build_trainer`, as a user run's) or the autocast a raw loop needs."""

from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from src.cli.checks import check_model_settings
from src.cli.resolvers import register_resolvers
from src.data.gpu_loader import GPUBatches
from src.training.module import ClassifierModule
from src.training.trainer import build_trainer

# before it composes conf/train.yaml
register_resolvers()

CONF = Path(__file__).resolve().parents[2] / "conf"
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def model_config(name: str, image_size: int, device: str, extra: list[str] = ()):
    """The model's conf/model/<name>.yaml as src.train composes it, with random weights, the conf/trainer of the
    device (bf16 on a GPU), its TensorBoard logger and no callbacks (no checkpoints or progress bar to time)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [
            f"model={name}",
            "data=cifar10",
            f"data.image_size={image_size}",
            "scheduler=none",
            "callbacks=none",
            *extra,
        ]
        cfg = compose("train", overrides=overrides + [f"trainer={'gpu' if device == 'cuda' else 'cpu'}"])
    with open_dict(cfg):
        if "pretrained" in cfg.model:  # speed does not depend on the weights, and they may be offline
            cfg.model.pretrained = False
    check_model_settings(cfg)  # a bad setting is one error line in config keys, as in src.train
    return cfg


def build_module(cfg, compile_backbone: bool = False) -> ClassifierModule:
    backbone = {**cfg.model, "compile": compile_backbone}
    return ClassifierModule(backbone, cfg.optimizer, None, num_classes=cfg.data.num_classes)


def bench_trainer(cfg, device: str, log_dir: str, *callbacks: L.Callback, **settings) -> L.Trainer:
    """The Trainer a user run gets (src/training/trainer.py: conf/trainer, the logger group, the upstream workarounds),
    writing to `log_dir`, without validation and checkpoints. Every Trainer of the benchmark comes from here."""
    # paths.output_dir (Hydra's run dir in a user run) is default_root_dir's and the logger's folder
    cfg = OmegaConf.merge(cfg, {"paths": {"output_dir": log_dir}})
    return build_trainer(
        cfg, *callbacks, accelerator=device, limit_val_batches=0, num_sanity_val_steps=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **settings,
    )  # fmt: skip


def autocast(cfg, device: str):
    """The autocast of the config's Trainer precision, for the loops that run without a Trainer."""
    mixed = str(cfg.trainer.precision) == "bf16-mixed"
    return torch.autocast(device, dtype=torch.bfloat16) if mixed else nullcontext()


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random CIFAR-shaped uint8 images (32 px) and labels of 10 classes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def gpu_batches(images, labels, batch_size: int, image_size: int, device: str) -> GPUBatches:
    """The GPU-resident loader (src/data/gpu_loader.py) on `device`, augmenting as for training."""
    return GPUBatches(
        images.to(device), labels.to(device), batch_size, image_size, MEAN, STD, train=True,
        crop_padding=max(1, image_size // 8), flip=True,
    )  # fmt: skip
