"""The benchmark's document: the machine, the measured results as a markdown table (the only place they become
text), and the notes that explain the columns."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import TYPE_CHECKING

import lightning as L
import torch

if TYPE_CHECKING:
    from src.bench.gpu import EpochSeconds
    from src.bench.step_profile import ProfileDifference
    from src.bench.suite import Results

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

NOT_MEASURED_ON_CPU = """### Not measured here (no GPU on this machine)
The CUDA-only numbers (model FLOPs utilisation against the GPU's bf16 peak, `torch.compile` against eager
through `Trainer.fit`, and the seconds per 50 000-image epoch of the scratch ViT with the GPU-resident loader)
were not measured, and nothing about GPU speed should be read from the CPU table. Measure them on a GPU with:

    python -m src.bench --device cuda --models vit:32,deit:224,vgg19:32,densenet121:32 --batch-size 128

(`deit` and `vgg19`/`densenet121` need their conf/model files; names without one are skipped with a message.)
"""


def machine(device: str) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores visible, torch using {torch.get_num_threads()} threads",
        f"- torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}",
        f"- device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (no GPU)'}",
        f"- load average (1, 5, 15 min) at the start: {load_average()}",
    ]


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(rows: list[dict]) -> str:
    """A table of `rows` (column name -> value), with the columns of all of them in order of appearance."""

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


def model_row(result) -> dict:
    """A `src.bench.ModelResult` as table cells; measurements not made (None) have no cell."""
    training, loaders, gpu = result.fit_vs_raw, result.loaders, result.gpu
    ratios = training.ratios_per_repeat
    row = {
        "model": result.model,
        "image size": result.image_size,
        "precision": result.precision,
        "train img/s (ours)": training.ours_img_s,
        "train img/s (raw)": training.raw_img_s,
        "ours / raw": training.ratio,
        "ours / raw per repeat: median (min–max)": (
            f"{statistics.median(ratios):.3f} ({ratios[0]:.3f}–{ratios[-1]:.3f})"
        ),
        "ours / raw per CPU second": training.ratio_per_cpu_second,
        "overhead ms/step": training.overhead_ms_per_step,
        "fit() fixed cost s": training.fit_fixed_cost_s,
        "peak train MiB": training.peak_train_mib,
        "infer img/s": training.infer_img_s,
        "DataLoader img/s": loaders.dataloader_img_s,
        "GPU loader img/s": loaders.gpu_loader_img_s,
        "loader / model (DataLoader, GPU loader)": (
            f"{loaders.dataloader_img_s / training.raw_img_s:.1f}x, "
            f"{loaders.gpu_loader_img_s / training.raw_img_s:.1f}x"
        ),
    }
    if gpu:
        row |= {
            "train GFLOP/image": gpu.train_gflop_per_image,
            "train img/s compiled (ours)": gpu.compiled_ours_img_s,
            "MFU (raw loop)": percent(gpu.mfu_raw),
            "MFU (compiled, ours)": percent(gpu.mfu_compiled_ours),
        }
    return {column: value for column, value in row.items() if value is not None}


def percent(fraction: float | None) -> str | None:
    return None if fraction is None else f"{fraction:.1%}"


def epoch_row(epoch: EpochSeconds) -> dict:
    return {"model": "vit epoch", "epoch s (eager)": epoch.eager_s, "epoch s (compiled)": epoch.compiled_s}


def epoch_note(epoch: EpochSeconds) -> str:
    return (
        f"Scratch ViT, one {epoch.images}-image epoch (CIFAR-10's training set has 50 000) with the "
        f"GPU-resident loader, batch {epoch.batch_size}: {epoch.eager_s:.2f} s eager, {epoch.compiled_s:.2f} s "
        "compiled."
    )


def difference_tables(profile: ProfileDifference, ours: str, theirs: str, unit: str) -> list[str]:
    """A profile of two loops (src/bench/step_profile.py) as two markdown tables: self time by package (and in
    all), and the functions whose self time differs most."""

    def rows(pairs: dict[str, tuple[float, float]], first: str) -> list[dict]:
        return [
            {first: name, f"{ours} ms/{unit}": a, f"{theirs} ms/{unit}": b, f"difference ms/{unit}": a - b}
            for name, (a, b) in pairs.items()
        ]

    total = tuple(sum(pair[i] for pair in profile.packages.values()) for i in (0, 1))
    return [
        markdown(rows(profile.packages, "package") + rows({"all": total}, "package")),
        "",
        markdown(rows(profile.functions, "function (largest difference first)")),
        "",
    ]


def profile_tables(result) -> list[str]:
    """A model's step profile: where Trainer.fit's steps spend more than the raw loop's."""
    return [
        f"Where a step of {result.model} at {result.image_size} px goes: cProfile's self time per step over "
        f"{result.profile.units} steady-state steps of each loop (cProfile slows Python code far more than "
        "torch's kernels: these milliseconds show where the overhead is, the table above how large it is).",
        "",
        *difference_tables(result.profile, "Trainer.fit", "raw loop", "step"),
    ]


def document(results: Results, command: str, machine_lines: list[str], device: str, append: bool) -> str:
    """The text `src.bench` prints and writes to --out: a title and the columns' meaning unless appended to an
    earlier run's document, the command, the machine, the table and the notes."""
    rows = [model_row(result) for result in results.models]
    notes = []
    if results.epoch:
        rows.append(epoch_row(results.epoch))
        notes.append(epoch_note(results.epoch))
    for result in results.models:
        if result.profile:
            notes += profile_tables(result)
    if device == "cpu" and not append:  # said once per file
        notes.append(NOT_MEASURED_ON_CPU)
    header = [
        *machine_lines,
        f"- load average at the end: {load_average()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    title = [] if append else ["# Benchmarks", "", COLUMNS, ""]
    return "\n".join([*title, f"## {command}", "", *header, "", markdown(rows), "", *notes])
