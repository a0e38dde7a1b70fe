"""Speed benchmark: what the framework costs over a hand-written loop, and whether the data keeps up.

    python -m src.bench --device cpu --models vit:32,deit:224,vgg19:32,densenet121:32 --batch-size 128

For each model (`name` or `name:image_size`; any conf/model option) it measures, in one process:
- training images/s through Lightning `Trainer.fit` (our ClassifierModule with its per-step logging and metrics;
  no checkpointing, progress bar or validation) and through a raw PyTorch loop on the same module, data, batch
  size, precision and optimizer, alternating, `--repeats` times; medians, and their ratio (our overhead);
- inference images/s and peak memory (GPU: max allocated; CPU: the process's peak resident set size);
- the loaders alone (DataLoader with the training transforms, and the GPU-resident loader), against the
  model's training rate.
On CUDA also: model FLOPs utilisation, torch.compile against eager, and seconds per 50 000-image epoch.
Data are synthetic, CIFAR-shaped uint8 images (32 px, resized to the model's size), augmented as for training.
It prints a markdown table and writes it, with the machine described, to `--out` (docs/benchmarks.md).
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import open_dict
from torch.utils.data import DataLoader, TensorDataset

from src.data.base import TransformedSubset
from src.data.gpu_loader import GPUBatches
from src.data.transforms import build_transforms
from src.flops import flop_counter
from src.module import ClassifierModule
from src.resolvers import register_resolvers

# before it composes conf/train.yaml
register_resolvers()

CONF = Path(__file__).resolve().parents[1] / "conf"
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
# H100 SXM's dense bf16 tensor-core peak (NVIDIA's H100 data sheet, without sparsity): the H200 has the same
# GH100 tensor cores and clocks, only more and faster memory
H100_SXM_DENSE_BF16 = 989.4e12


def peak_bf16_flops(device: str) -> float | None:
    """The GPU's dense bf16 peak, for MFU: Lightning's table (get_available_flops), except for the H200, which
    Lightning 2.6 does not recognise by the name the driver gives it ("NVIDIA H200": Lightning issue #20660)
    and lists with the with-sparsity figure, twice the dense one, where it does (issue #21677, fixed after
    2.6.6 by PR #21743). Drop the H200 branch once the pinned Lightning has that fix."""
    if device != "cuda":
        return None
    if "H200" in torch.cuda.get_device_name():
        return H100_SXM_DENSE_BF16
    return get_available_flops(torch.device(device), torch.bfloat16)


def model_config(name: str, image_size: int, device: str, extra: list[str] = ()):
    """The model's conf/model/<name>.yaml as src.train composes it, with random weights."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [
            f"model={name}",
            "data=cifar10",
            f"data.image_size={image_size}",
            "scheduler=none",
            *extra,
        ]
        cfg = compose("train", overrides=overrides + [f"trainer={'gpu' if device == 'cuda' else 'cpu'}"])
    with open_dict(cfg):
        if "pretrained" in cfg.model:  # speed does not depend on the weights, and they may be offline
            cfg.model.pretrained = False
    return cfg


def build_module(cfg, compile_backbone: bool = False) -> ClassifierModule:
    backbone = {**cfg.model, "compile": compile_backbone}
    return ClassifierModule(backbone, cfg.optimizer, None, num_classes=cfg.data.num_classes)


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def gpu_batches(images, labels, batch_size: int, image_size: int, device: str) -> GPUBatches:
    return GPUBatches(
        images.to(device), labels.to(device), batch_size, image_size, MEAN, STD, train=True,
        crop_padding=max(1, image_size // 8), flip=True,
    )  # fmt: skip


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock() -> tuple[float, float]:
    """Wall time, and this process's CPU time: on a CPU shared with other jobs the latter hardly depends on
    how often they take the cores away, so it still compares two loops when wall times are noise."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    return end[0] - start[0], end[1] - start[1]


class StepTimer(L.Callback):
    """Time from the start of batch `warmup` to the end of the last batch (steady state)."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.start, self.end = warmup, device, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == trainer.num_training_batches - 1:  # one sync at the end, as the raw loop does
            sync(self.device)
            self.end = clock()


def bench_trainer(cfg, device: str, log_dir: str, **settings) -> L.Trainer:
    """conf/trainer as a user run gets it (precision, log_every_n_steps, ...), without validation and
    checkpoints; it logs to TensorBoard as a user run does. Every Trainer of the benchmark comes from here."""
    return instantiate(
        cfg.trainer, accelerator=device, default_root_dir=log_dir, limit_val_batches=0, num_sanity_val_steps=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        logger=TensorBoardLogger(log_dir, name="", version=""), **settings,
    )  # fmt: skip


def lightning_rate(module, loader, cfg, steps: int, warmup: int, device: str) -> tuple[float, float, float]:
    """Training images/s of `Trainer.fit` in its steady state (per wall and per CPU second), and the fit
    call's fixed cost in seconds."""
    timer = StepTimer(warmup, device)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = bench_trainer(
            cfg, device, log_dir, max_epochs=1, limit_train_batches=steps, callbacks=[timer]
        )
        begin = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        total = time.perf_counter() - begin
    steady, cpu = elapsed(timer.start, timer.end)
    images = (steps - warmup) * loader.batch_size
    return images / steady, images / cpu, total - steady * steps / (steps - warmup)


def autocast(cfg, device: str):
    mixed = str(cfg.trainer.precision) == "bf16-mixed"
    return torch.autocast(device, dtype=torch.bfloat16) if mixed else nullcontext()


def raw_rate(module, loader, cfg, steps: int, warmup: int, device: str) -> tuple[float, float]:
    """The same training as `lightning_rate`, in the loop a user would write by hand."""
    module.to(device).train()
    optimizer = module.configure_optimizers()  # the same optimizer and parameter groups
    for step, (images, labels) in enumerate(loader):
        if step == warmup:
            sync(device)
            start = clock()
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(cfg, device):
            loss = module.criterion(module(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    wall, cpu = elapsed(start, clock())
    images = (steps - warmup) * loader.batch_size
    return images / wall, images / cpu


@torch.inference_mode()
def inference_rate(module, loader, cfg, steps: int, warmup: int, device: str) -> float:
    module.to(device).eval()
    for step, (images, _) in enumerate(loader):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        if step == steps:
            break
        with autocast(cfg, device):
            module(images.to(device))
    sync(device)
    return (steps - warmup) * loader.batch_size / (time.perf_counter() - start)


def loader_rate(loader, steps: int, device: str) -> float:
    iterator = iter(loader)
    next(iterator)  # workers started, first batch made
    sync(device)
    start, images = time.perf_counter(), 0
    for _, (batch, _) in zip(range(steps), iterator, strict=False):
        images += len(batch)
    sync(device)
    return images / (time.perf_counter() - start)


class PeakMemory:
    """Peak GPU memory allocated, or the peak resident set size of this process sampled every 5 ms (the
    kernel's own peak never goes down, so it cannot tell one model from the one before)."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.005):
            with open("/proc/self/statm") as statm:
                self.peak = max(self.peak, int(statm.read().split()[1]) * page)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def train_flops(module, images, labels, cfg, device: str) -> int:
    """Model FLOPs of one training step (forward + backward), counted by torch.utils.flop_counter."""
    with flop_counter() as counter, autocast(cfg, device):
        module.criterion(module(images), labels).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_model(name: str, image_size: int, args) -> dict | None:
    device = args.device
    try:
        cfg = model_config(name, image_size, device, args.overrides)
    except MissingConfigException:
        print(f"skipping {name}: there is no conf/model/{name}.yaml", file=sys.stderr)
        return None
    torch.manual_seed(0)
    module = build_module(cfg)
    images, labels = synthetic(args.steps * args.batch_size)
    loader = gpu_batches(images, labels, args.batch_size, image_size, device)
    row = {"model": name, "image size": image_size, "precision": str(cfg.trainer.precision)}
    ours, raw, ours_cpu, raw_cpu, fixed = [], [], [], [], []
    with PeakMemory(device) as memory:
        for _ in range(args.repeats):  # alternating, so that a change of machine load hits both
            rate, cpu_rate, cost = lightning_rate(module, loader, cfg, args.steps, args.warmup, device)
            ours.append(rate)
            ours_cpu.append(cpu_rate)
            fixed.append(cost)
            rate, cpu_rate = raw_rate(module, loader, cfg, args.steps, args.warmup, device)
            raw.append(rate)
            raw_cpu.append(cpu_rate)
    row["train img/s (ours)"] = statistics.median(ours)
    row["train img/s (raw)"] = statistics.median(raw)
    row["ours / raw"] = row["train img/s (ours)"] / row["train img/s (raw)"]
    pairs = sorted(a / b for a, b in zip(ours, raw, strict=True))
    row["ours / raw per repeat: median (min–max)"] = (
        f"{statistics.median(pairs):.3f} ({pairs[0]:.3f}–{pairs[-1]:.3f})"
    )
    if device == "cpu":
        row["ours / raw per CPU second"] = statistics.median(ours_cpu) / statistics.median(raw_cpu)
    row["overhead ms/step"] = (
        1000 * args.batch_size * (1 / row["train img/s (ours)"] - 1 / row["train img/s (raw)"])
    )
    row["fit() fixed cost s"] = statistics.median(fixed)
    row["peak train MiB"] = memory.mib
    row["infer img/s"] = statistics.median(
        inference_rate(module, loader, cfg, args.steps, args.warmup, device) for _ in range(3)
    )
    transforms = build_transforms("cifar", image_size, MEAN, STD, train=True, native_size=32)
    dataset = TransformedSubset(TensorDataset(images, labels), range(len(images)), transforms)
    workers = args.num_workers
    torch_loader = DataLoader(
        dataset, args.batch_size, shuffle=True, num_workers=workers, pin_memory=device == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
    )  # fmt: skip
    row["DataLoader img/s"] = loader_rate(torch_loader, args.steps - 1, device)
    row["GPU loader img/s"] = loader_rate(loader, args.steps - 1, device)
    row["loader / model (DataLoader, GPU loader)"] = (
        f"{row['DataLoader img/s'] / row['train img/s (raw)']:.1f}x, "
        f"{row['GPU loader img/s'] / row['train img/s (raw)']:.1f}x"
    )
    if args.extras:
        row |= gpu_extras(cfg, module, loader, args)
    return row


def gpu_extras(cfg, module, loader, args) -> dict:
    """Model FLOPs per image, MFU (against the GPU's bf16 peak), and torch.compile against eager, both through
    Trainer.fit. Run on CUDA by main(); on args.device, so that a test runs them on the CPU too."""
    device, extras = args.device, {}
    images, labels = next(iter(loader))
    flops = train_flops(module.to(device).train(), images, labels, cfg, device)
    extras["train GFLOP/image"] = flops / len(images) / 1e9
    peak = peak_bf16_flops(device)
    raw = statistics.median(
        raw_rate(module, loader, cfg, args.steps, args.warmup, device)[0] for _ in range(3)
    )
    compiled = build_module(cfg, compile_backbone=True)
    extras["train img/s compiled (ours)"] = lightning_rate(
        compiled, loader, cfg, args.steps, args.warmup, device
    )[0]
    if peak:
        per_image = flops / len(images)
        extras["MFU (raw loop)"] = f"{per_image * raw / peak:.1%}"
        extras["MFU (compiled, ours)"] = f"{per_image * extras['train img/s compiled (ours)'] / peak:.1%}"
    return extras


def epoch_seconds(args, compile_backbone: bool = False) -> float:
    """One 50 000-image epoch (the size of CIFAR-10's training set) of the scratch ViT with the GPU-resident
    loader, through Trainer.fit, after one warm-up epoch (which also pays for compiling)."""
    cfg = model_config("vit", 32, args.device, args.overrides)
    module = build_module(cfg, compile_backbone)
    images, labels = synthetic(args.epoch_images)
    loader = gpu_batches(images, labels, args.epoch_batch_size, 32, args.device)
    times = {}

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            sync(args.device)
            times[trainer.current_epoch] = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            sync(args.device)
            times[trainer.current_epoch] = time.perf_counter() - times[trainer.current_epoch]

    with tempfile.TemporaryDirectory() as log_dir:
        trainer = bench_trainer(cfg, args.device, log_dir, max_epochs=2, callbacks=[EpochTimer()])
        trainer.fit(module, train_dataloaders=loader)
    return times[1]


def machine(device: str) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} cores visible, torch using {torch.get_num_threads()} threads",
        f"- torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}",
        f"- device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (no GPU)'}",
        f"- load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    return lines


def markdown(rows: list[dict]) -> str:
    def cell(value):
        return (
            f"{value:.3f}"
            if isinstance(value, float) and value < 10
            else (f"{value:.0f}" if isinstance(value, float) else str(value))
        )

    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument(
        "--models",
        default="vit:32,deit:224,vgg19:32,densenet121:32",
        help="comma-separated conf/model options, each optionally :image_size (default 32)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="training steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating Lightning/raw repetitions")
    parser.add_argument("--num-workers", type=int, default=2, help="workers of the DataLoader measured")
    parser.add_argument(
        "--epoch-images", type=int, default=50_000, help="with the extras: images per timed epoch (0: none)"
    )
    parser.add_argument("--epoch-batch-size", type=int, default=512)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model.depth=1")
    parser.add_argument(
        "--extras", choices=["auto", "on", "off"], default="auto",
        help="the GPU measurements (FLOPs, MFU, compiled vs eager, epoch seconds); auto: on CUDA only",
    )  # fmt: skip
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--append", action="store_true", help="add this run to --out instead of replacing it")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps - 1:
        parser.error("--warmup must be at least 0 and below --steps - 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    args.extras = args.extras == "on" or (args.extras == "auto" and args.device == "cuda")
    return args


NOT_MEASURED_ON_CPU = """### Not measured here (no GPU on this machine)
The CUDA-only numbers (model FLOPs utilisation against the GPU's bf16 peak, `torch.compile` against eager
through `Trainer.fit`, and the seconds per 50 000-image epoch of the scratch ViT with the GPU-resident loader)
were not measured, and nothing about GPU speed should be read from the CPU table. Measure them on a GPU with:

    python -m src.bench --device cuda --models vit:32,deit:224,vgg19:32,densenet121:32 --batch-size 128

(`deit` and `vgg19`/`densenet121` need their conf/model files; names without one are skipped with a message.)
"""

COLUMNS = """Columns: *ours* is `Trainer.fit` with the ClassifierModule (its per-step logging and metrics, TensorBoard
logger, conf/trainer settings; no checkpointing, progress bar or validation); *raw* is a hand-written loop
(forward, loss, zero_grad, backward, step) on the same module, data, batch size, precision and optimizer. Both
are timed in their steady state (after the warm-up steps), alternating in one process; the table shows medians.
On a CPU shared with other jobs wall times swing with their load; *ours / raw per CPU second* compares the
process CPU time each loop took instead, which depends much less on that load. *overhead ms/step* is the
difference of the per-step (wall) times; *fit() fixed cost* is the rest of a `fit` call
(setup and teardown), paid once per run. *peak train MiB* is the GPU's max allocated memory, or on a CPU the
process's resident set size (which includes Python, torch and the data set). *loader / model* is how many times
faster than the model trains each loader alone delivers augmented batches (DataLoader: `--num-workers` workers
with the torchvision transforms; GPU loader: src/data/gpu_loader.py on the same device as the model)."""


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    header = machine(args.device)
    rows = []
    for spec in args.models.split(","):
        name, _, size = spec.partition(":")
        row = bench_model(name.strip(), int(size or 32), args)
        if row:
            rows.append(row)
            print(markdown([row]), flush=True)
    notes = []
    if args.extras and args.epoch_images:
        eager, compiled = epoch_seconds(args), epoch_seconds(args, compile_backbone=True)
        notes.append(
            f"Scratch ViT, one {args.epoch_images}-image epoch (CIFAR-10's training set has 50 000) with the "
            f"GPU-resident loader, batch {args.epoch_batch_size}: {eager:.2f} s eager, {compiled:.2f} s compiled."
        )
        rows.append({"model": "vit epoch", "epoch s (eager)": eager, "epoch s (compiled)": compiled})
    if args.device == "cpu" and not args.append:  # said once per file
        notes.append(NOT_MEASURED_ON_CPU)
    command = "python -m src.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    header.append(f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header.append(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    title = [] if args.append else ["# Benchmarks", "", COLUMNS, ""]
    text = "\n".join(
        [*title, f"## {command}", "", *header, "", markdown(rows), "", *notes]
    )  # fmt: skip
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if args.append else "w") as file:
        file.write(("\n" if args.append else "") + text + "\n")
    return rows


if __name__ == "__main__":
    main()
