"""What the framework costs: training images/s through `Trainer.fit` (ours) against a hand-written PyTorch loop
(raw) on the same module, data, batch size, precision and optimizer, alternating; inference images/s; peak memory."""

import cProfile
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from src.bench.timing import PeakMemory, StepTimer, clock, elapsed, sync
from src.bench.workload import autocast, bench_trainer


@dataclass(frozen=True)
class FitVsRaw:
    """One model's training and inference rates (images/s; medians over the repeats)."""

    batch_size: int
    ours_img_s: float
    raw_img_s: float
    ratios_per_repeat: tuple[float, ...]  # ours / raw of each repeat, ascending
    ratio_per_cpu_second: float | None  # of the medians of images per process CPU second; on a CPU only
    fit_fixed_cost_s: float  # the rest of a fit call: setup and teardown
    peak_train_mib: float
    infer_img_s: float

    @property
    def ratio(self) -> float:
        return self.ours_img_s / self.raw_img_s

    @property
    def overhead_ms_per_step(self) -> float:
        return 1000 * self.batch_size * (1 / self.ours_img_s - 1 / self.raw_img_s)


def lightning_rate(module, loader, cfg, steps: int, warmup: int, device: str) -> tuple[float, float, float]:
    """Training images/s of `Trainer.fit` in its steady state (per wall and per CPU second), and the fit
    call's fixed cost in seconds."""
    timer = StepTimer(warmup, device)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = bench_trainer(cfg, device, log_dir, timer, max_epochs=1, limit_train_batches=steps)
        begin = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        total = time.perf_counter() - begin
    steady, cpu = elapsed(timer.start, timer.end)
    images = (steps - warmup) * loader.batch_size
    return images / steady, images / cpu, total - steady * steps / (steps - warmup)


def raw_rate(
    module, loader, cfg, steps: int, warmup: int, device: str, profile: cProfile.Profile | None = None
) -> tuple[float, float]:
    """The same training as `lightning_rate`, in the loop a user would write by hand (its steady state under
    `profile` when given: step_profile.py)."""
    module.to(device).train()
    optimizer = module.configure_optimizers()  # the same optimizer and parameter groups
    cast = autocast(cfg, device)  # made once: reading the config every step slowed the raw loop by 0.04 ms
    for step, (images, labels) in enumerate(loader):
        if step == warmup:
            sync(device)
            start = clock()
            if profile:
                profile.enable()
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with cast:
            loss = module.criterion(module(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    if profile:
        profile.disable()
    wall, cpu = elapsed(start, clock())
    images = (steps - warmup) * loader.batch_size
    return images / wall, images / cpu


@torch.inference_mode()
def inference_rate(module, loader, cfg, steps: int, warmup: int, device: str) -> float:
    module.to(device).eval()
    cast = autocast(cfg, device)
    for step, (images, _) in enumerate(loader):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        if step == steps:
            break
        with cast:
            module(images.to(device))
    sync(device)
    return (steps - warmup) * loader.batch_size / (time.perf_counter() - start)


def measure_fit_vs_raw(module, loader, cfg, steps: int, warmup: int, repeats: int, device: str) -> FitVsRaw:
    ours, raw, ours_cpu, raw_cpu, fixed = [], [], [], [], []
    with PeakMemory(device) as memory:
        for _ in range(repeats):  # alternating, so that a change of machine load hits both
            rate, cpu_rate, cost = lightning_rate(module, loader, cfg, steps, warmup, device)
            ours.append(rate)
            ours_cpu.append(cpu_rate)
            fixed.append(cost)
            rate, cpu_rate = raw_rate(module, loader, cfg, steps, warmup, device)
            raw.append(rate)
            raw_cpu.append(cpu_rate)
    infer = statistics.median(inference_rate(module, loader, cfg, steps, warmup, device) for _ in range(3))
    return FitVsRaw(
        batch_size=loader.batch_size,
        ours_img_s=statistics.median(ours),
        raw_img_s=statistics.median(raw),
        ratios_per_repeat=tuple(sorted(a / b for a, b in zip(ours, raw, strict=True))),
        ratio_per_cpu_second=(
            statistics.median(ours_cpu) / statistics.median(raw_cpu) if device == "cpu" else None
        ),
        fit_fixed_cost_s=statistics.median(fixed),
        peak_train_mib=memory.mib,
        infer_img_s=infer,
    )
