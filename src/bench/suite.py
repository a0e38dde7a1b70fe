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
With `--profile`: where the per-step overhead goes, cProfile's self time per step of both loops by package and
by function (step_profile.py).
Data are synthetic, CIFAR-shaped uint8 images (32 px, resized to the model's size), augmented as for training.
It prints a markdown table and writes it, with the machine described, to `--out` (outputs/benchmarks.md;
docs/speed.md shows the current tables).

One module per measurement: fit_vs_raw.py (ours against the raw loop, inference, memory), loaders.py, gpu.py
(FLOPs, MFU, compiled against eager, epoch seconds), step_profile.py (where a step's time goes); workload.py is
what they run (config, module, data, Trainer), timing.py how they time it, report.py the document.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import MissingConfigException

from src.bench import report
from src.bench.fit_vs_raw import FitVsRaw, measure_fit_vs_raw
from src.bench.gpu import EpochSeconds, GpuExtras, gpu_extras, measure_epochs
from src.bench.loaders import LoaderRates, measure_loaders
from src.bench.step_profile import ProfileDifference, profile_steps
from src.bench.workload import build_module, gpu_batches, model_config, synthetic


@dataclass(frozen=True)
class ModelResult:
    model: str
    image_size: int
    precision: str
    fit_vs_raw: FitVsRaw
    loaders: LoaderRates
    gpu: GpuExtras | None  # with the extras only
    profile: ProfileDifference | None  # with --profile only


@dataclass(frozen=True)
class Results:
    models: list[ModelResult]
    epoch: EpochSeconds | None  # with the extras and --epoch-images only


def bench_model(name: str, image_size: int, args) -> ModelResult | None:
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
    fit_vs_raw = measure_fit_vs_raw(module, loader, cfg, args.steps, args.warmup, args.repeats, device)
    loaders = measure_loaders(images, labels, loader, args.num_workers, args.steps - 1, device)
    return ModelResult(
        model=name,
        image_size=image_size,
        precision=str(cfg.trainer.precision),
        fit_vs_raw=fit_vs_raw,
        loaders=loaders,
        gpu=gpu_extras(cfg, module, loader, args) if args.extras else None,
        profile=profile_steps(module, loader, cfg, args.steps, args.warmup, device) if args.profile else None,
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.bench", description=__doc__.split("\n\n")[0])
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
    parser.add_argument(
        "--profile", action="store_true", help="also profile each loop once: self time per step, by package"
    )
    parser.add_argument("--out", default="outputs/benchmarks.md")
    parser.add_argument("--append", action="store_true", help="add this run to --out instead of replacing it")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps - 1:
        parser.error("--warmup must be at least 0 and below --steps - 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    args.extras = args.extras == "on" or (args.extras == "auto" and args.device == "cuda")
    return args


def main(argv=None) -> Results:
    args = parse_args(argv)
    machine = report.machine(args.device)
    models = []
    for spec in args.models.split(","):
        name, _, size = spec.partition(":")
        result = bench_model(name.strip(), int(size or 32), args)
        if result:
            models.append(result)
            print(report.markdown([report.model_row(result)]), flush=True)
    epoch = measure_epochs(args) if args.extras and args.epoch_images else None
    results = Results(models, epoch)
    command = "python -m src.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report.document(results, command, machine, args.device, args.append)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if args.append else "w") as file:
        file.write(("\n" if args.append else "") + text + "\n")
    return results
