"""The GPU measurements: model FLOPs per training image, model FLOPs utilisation against the GPU's bf16 peak,
torch.compile against eager through `Trainer.fit`, and seconds per epoch of the scratch ViT. `src.bench` runs them
on CUDA; they run on any device, so that a test runs them on the CPU (where there is no peak to compare with)."""

import statistics
import tempfile
from dataclasses import dataclass

from src.bench.fit_vs_raw import lightning_rate, raw_rate
from src.bench.timing import EpochTimer
from src.bench.workload import autocast, bench_trainer, build_module, gpu_batches, model_config, synthetic
from src.upstream_fixes.flops import measure_flops, peak_bf16_flops


@dataclass(frozen=True)
class GpuExtras:
    train_gflop_per_image: float  # forward + backward, as torch's FlopCounterMode counts them
    compiled_ours_img_s: float  # training images/s of Trainer.fit with the compiled backbone
    mfu_raw: float | None  # model FLOPs utilisation of the eager raw loop; None without a known bf16 peak
    mfu_compiled_ours: float | None  # of Trainer.fit with the compiled backbone


@dataclass(frozen=True)
class EpochSeconds:
    """Seconds of one epoch of the scratch ViT at 32 px with the GPU-resident loader, after a warm-up epoch."""

    images: int
    batch_size: int
    eager_s: float
    compiled_s: float


def train_flops(module, images, labels, cfg, device: str) -> int:
    """Model FLOPs of one training step (forward + backward) on `images`, in the config's precision."""
    with autocast(cfg, device):
        flops = measure_flops(module, lambda: module(images), lambda logits: module.criterion(logits, labels))
    module.zero_grad(set_to_none=True)
    return flops


def gpu_extras(cfg, module, loader, args) -> GpuExtras:
    """FLOPs per image, MFU of the raw loop (median of 3) and of the compiled backbone through Trainer.fit."""
    device = args.device
    images, labels = next(iter(loader))
    per_image = train_flops(module.to(device).train(), images, labels, cfg, device) / len(images)
    raw = statistics.median(
        raw_rate(module, loader, cfg, args.steps, args.warmup, device)[0] for _ in range(3)
    )
    compiled = build_module(cfg, compile_backbone=True)
    compiled_ours = lightning_rate(compiled, loader, cfg, args.steps, args.warmup, device)[0]
    peak = peak_bf16_flops(device)
    return GpuExtras(
        train_gflop_per_image=per_image / 1e9,
        compiled_ours_img_s=compiled_ours,
        mfu_raw=per_image * raw / peak if peak else None,
        mfu_compiled_ours=per_image * compiled_ours / peak if peak else None,
    )


def epoch_seconds(args, compile_backbone: bool = False) -> float:
    """One `args.epoch_images`-image epoch of the scratch ViT with the GPU-resident loader, through Trainer.fit,
    after one warm-up epoch (which also pays for compiling)."""
    cfg = model_config("vit", 32, args.device, args.overrides)
    module = build_module(cfg, compile_backbone)
    images, labels = synthetic(args.epoch_images)
    loader = gpu_batches(images, labels, args.epoch_batch_size, 32, args.device)
    timer = EpochTimer(args.device)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = bench_trainer(cfg, args.device, log_dir, timer, max_epochs=2)
        trainer.fit(module, train_dataloaders=loader)
    return timer.seconds[1]


def measure_epochs(args) -> EpochSeconds:
    return EpochSeconds(
        images=args.epoch_images,
        batch_size=args.epoch_batch_size,
        eager_s=epoch_seconds(args),
        compiled_s=epoch_seconds(args, compile_backbone=True),
    )
