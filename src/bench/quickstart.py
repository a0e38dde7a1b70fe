"""The quickstart (`make train`) against a hand-written PyTorch loop doing the same work: what the framework costs
on the job a new user runs first, whole process included (imports, data, 60 epochs, validation, test, files).

    python -m src.bench.quickstart --repeats 3                  # make train's command vs the loop, whole process
    python -m src.bench.quickstart --repeats 3 trainer.max_epochs=1   # short runs, where start-up dominates
    python -m src.bench.quickstart --growth                     # s/epoch against training-set and batch size
    python -m src.bench.quickstart --imports --repeats 3        # what each side imports, and what inside costs
    python -m src.bench.quickstart --profile                    # where an epoch of each Trainer goes, by package

The hand-written loop is what a careful user writes in a notebook: the same VisionTransformer and settings, read
from the composed quickstart config; scikit-learn's digits, the same seeded split, upscaled to the image size once
and normalised; a reflect-padded random crop per image done on each batch tensor; AdamW without weight decay on
biases, norms and embeddings; warm-up + cosine per step; validation every epoch; the best epoch's weights saved
and tested. No logger, checkpoint of the last epoch, report or pictures: those are what the framework adds.
The third side runs that same loop (the same tensors, random numbers and math, so the same test accuracy) in a
bare `lightning.Trainer` (no logger, checkpoint callback, progress bar or summary): what Lightning itself adds.
After one unmeasured 1-epoch run of each (to warm the page cache), runs alternate (framework, Lightning, loop,
framework, ...) and the table shows medians of wall and CPU seconds, and the fastest run of each side.
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

CONF = Path(__file__).resolve().parents[2] / "conf"
QUICKSTART = ["experiment=quickstart", "~callbacks.rich_progress_bar"]
# the sides whole_process compares, as (numerator, denominator)
RATIOS = (("vitlab", "hand-written"), ("lightning", "hand-written"), ("vitlab", "lightning"))
# --growth: (times the training set is repeated, batch size)
GROWTH_POINTS = ((1, 64), (4, 64), (16, 64), (1, 16), (1, 256))
# --imports: what each side imports before its first step, and the modules inside them whose cost is shown
IMPORTS = {
    "torch": "import torch",
    "the hand-written loop's": "import torch, sklearn.datasets, sklearn.model_selection, src.models.vit",
    "the loop in bare Lightning": "import torch, sklearn.datasets, sklearn.model_selection, src.models.vit, lightning",
    "torchmetrics": "import torchmetrics",
    "lightning": "import lightning",
    "a quickstart run's": "import src.train, src.training.module, src.models.vit, src.data.digits, src.reporting",
}
# lightning.fabric.utilities.imports imports torchmetrics (compare_version imports the package to read its version,
# and -X importtime prints no line of its own for torchmetrics there)
NESTED = ("torch", "lightning", "lightning.fabric.utilities.imports", "torchvision", "scipy.signal",
          "matplotlib.pyplot", "timm", "wandb", "sklearn", "hydra")  # fmt: skip


def quickstart_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from src.cli.resolvers import register_resolvers

    register_resolvers()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*QUICKSTART, *overrides], return_hydra_config=True)


def loop_settings(cfg) -> dict:
    """What the hand-written loop needs of the composed config, as plain values (it imports no Hydra)."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("_target_", "compile", "channels_last"):
        model.pop(key, None)
    data, optimizer, schedule = cfg.data, cfg.optimizer, cfg.scheduler.schedule
    return {
        "model": model,
        **{key: data[key] for key in ("image_size", "batch_size", "val_size", "test_size")},
        "mean": list(data.mean), "std": list(data.std), "seed": cfg.seed,
        "lr": optimizer.lr, "weight_decay": optimizer.weight_decay, "betas": list(optimizer.betas),
        "warmup_fraction": schedule.warmup_fraction, "min_lr_ratio": schedule.min_lr_ratio,
        "epochs": cfg.trainer.max_epochs,
    }  # fmt: skip


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image's own window of the reflect-padded batch."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1))
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1))
    rows = (top + torch.arange(h).view(1, 1, h, 1)).expand(-1, padded.shape[1], -1, padded.shape[3])
    windows = padded.gather(2, rows)
    cols = (left + torch.arange(w).view(1, 1, 1, w)).expand(-1, windows.shape[1], h, -1)
    return windows.gather(3, cols)


def digits_split(settings: dict, train_repeats: int = 1) -> dict:
    """The loop's data: scikit-learn's digits upscaled once and normalised, and the seeded split's indices (the
    training ones repeated `train_repeats` times)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    s = settings
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1).expand(-1, 3, -1, -1)
    images = F.interpolate(images, size=(s["image_size"],) * 2, mode="bilinear", antialias=True).clamp(0, 1)
    images = (images - torch.tensor(s["mean"]).view(1, 3, 1, 1)) / torch.tensor(s["std"]).view(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target)
    indices = range(len(labels))
    rest, test = train_test_split(indices, test_size=s["test_size"], stratify=labels, random_state=s["seed"])
    train, val = train_test_split(
        rest, test_size=s["val_size"], stratify=labels[rest], random_state=s["seed"]
    )
    return {
        "images": images, "labels": labels, "train": torch.tensor(train).repeat(train_repeats),
        "val": torch.tensor(val), "test": torch.tensor(test),
    }  # fmt: skip


def model_and_optimizer(settings: dict, steps_per_epoch: int):
    """The quickstart's VisionTransformer; AdamW without weight decay on biases, norms and embeddings; warm-up +
    cosine as a per-step LambdaLR."""
    from src.models.vit import VisionTransformer

    s = settings
    model = VisionTransformer(**s["model"])
    no_decay = model.no_weight_decay()
    params = {name: p for name, p in model.named_parameters()}
    decay = [p for name, p in params.items() if p.ndim > 1 and name not in no_decay]
    rest_params = [p for name, p in params.items() if p.ndim <= 1 or name in no_decay]
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": rest_params, "weight_decay": 0.0}],
        lr=s["lr"], weight_decay=s["weight_decay"], betas=s["betas"],
    )  # fmt: skip
    total = s["epochs"] * steps_per_epoch
    warmup = max(1, int(s["warmup_fraction"] * total))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return 1e-3 + (1 - 1e-3) * step / warmup
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return s["min_lr_ratio"] + (1 - s["min_lr_ratio"]) * cosine

    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


class IndexBatches:
    """Batches of indices into the in-memory images, reshuffled at each pass (as the loop's `randperm`): what a
    bare Lightning fit iterates over instead of a DataLoader."""

    def __init__(self, indices: torch.Tensor, batch_size: int, shuffle: bool) -> None:
        self.indices, self.batch_size, self.shuffle = indices, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        # a generator: the permutation is drawn at the first batch, not when Lightning calls iter() to check that
        # the loader is iterable, so both sides draw the same random numbers in the same order
        order = self.indices[torch.randperm(len(self.indices))] if self.shuffle else self.indices
        yield from order.split(self.batch_size)


def loop_parts(settings: dict, train_repeats: int = 1):
    """What both loops start from, in the same order of random draws: the data, the shuffled training batches,
    the model, its optimizer and schedule, and the crop's padding (the digits recipe of src/data/transforms.py)."""
    torch.manual_seed(settings["seed"])
    data = digits_split(settings, train_repeats)
    train_batches = IndexBatches(data["train"], settings["batch_size"], shuffle=True)
    model, optimizer, scheduler = model_and_optimizer(settings, len(train_batches))
    return data, train_batches, model, optimizer, scheduler, max(1, settings["image_size"] // 8)


def correct_in(model: torch.nn.Module, data: dict, batch: torch.Tensor) -> int:
    """How many images of `batch` (indices) the model classifies right."""
    return (model(data["images"][batch]).argmax(1) == data["labels"][batch]).sum().item()


def hand_written_fit(settings: dict, train_repeats: int = 1) -> dict:
    """Trains, validates every epoch, keeps the best epoch's weights on disk, tests them."""
    s = settings
    data, train_batches, model, optimizer, scheduler, padding = loop_parts(s, train_repeats)
    images, labels = data["images"], data["labels"]

    @torch.no_grad()
    def accuracy(split) -> float:
        model.eval()
        return sum(correct_in(model, data, batch) for batch in split.split(s["batch_size"])) / len(split)

    best_acc, epoch_seconds = -1.0, []
    with tempfile.TemporaryDirectory() as folder:
        best_path = Path(folder) / "best.pt"
        for _ in range(s["epochs"]):
            start = time.perf_counter()
            model.train()
            for batch in train_batches:
                loss = F.cross_entropy(model(random_crop(images[batch], padding)), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            val_acc = accuracy(data["val"])
            if val_acc > best_acc:
                best_acc = val_acc
                torch.save(model.state_dict(), best_path)
            epoch_seconds.append(time.perf_counter() - start)
        model.load_state_dict(torch.load(best_path))
        return {
            "test_acc": accuracy(data["test"]), "best_val_acc": best_acc, "epoch_seconds": epoch_seconds,
            "steps_per_epoch": len(train_batches),
        }  # fmt: skip


def plain_lightning_fit(settings: dict, train_repeats: int = 1, callbacks: Sequence = ()) -> dict:
    """The hand-written loop's work (the same tensors, crop, optimizer, per-step schedule, validation every epoch,
    the best epoch's weights on disk, tested) run by a bare `lightning.Trainer`: no logger, checkpoint callback,
    progress bar or model summary, its other defaults kept. What Lightning itself adds to the loop. `callbacks`
    (measurements) are added."""
    import lightning as L

    s = settings
    data, train_batches, model, optimizer, scheduler, padding = loop_parts(s, train_repeats)
    images, labels, batch_size = data["images"], data["labels"], s["batch_size"]
    epoch_seconds: list[float] = []

    class LoopInLightning(L.LightningModule):
        def __init__(self, folder: str) -> None:
            super().__init__()
            self.model, self.best_path, self.best_acc = model, Path(folder) / "best.pt", -1.0

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.model(random_crop(images[batch], padding)), labels[batch])

        def on_train_epoch_start(self) -> None:
            self.start = time.perf_counter()

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.correct += correct_in(self.model, data, batch)

        test_step = validation_step

        def on_validation_epoch_start(self) -> None:
            self.correct = 0

        def on_validation_epoch_end(self) -> None:
            if self.trainer.sanity_checking:
                return
            val_acc = self.correct / len(data["val"])
            if val_acc > self.best_acc:
                self.best_acc = val_acc
                torch.save(self.model.state_dict(), self.best_path)
            epoch_seconds.append(time.perf_counter() - self.start)

        def on_test_epoch_start(self) -> None:
            self.model.load_state_dict(torch.load(self.best_path))
            self.correct = 0

        def configure_optimizers(self):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    with tempfile.TemporaryDirectory() as folder:
        module = LoopInLightning(folder)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_epochs=s["epochs"], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder, callbacks=list(callbacks),
        )  # fmt: skip
        trainer.fit(module, train_batches, IndexBatches(data["val"], batch_size, shuffle=False))
        trainer.test(module, IndexBatches(data["test"], batch_size, shuffle=False), verbose=False)
        return {
            "test_acc": module.correct / len(data["test"]), "best_val_acc": module.best_acc,
            "epoch_seconds": epoch_seconds,
        }  # fmt: skip


def framework_fit(overrides: list[str], train_repeats: int = 1, callbacks: Sequence = ()) -> list[float]:
    """The quickstart's Trainer (its callbacks and logger, as src.train builds it, and `callbacks`) fitting the
    quickstart's module, with the training set repeated `train_repeats` times: seconds of each epoch."""
    from hydra.utils import instantiate

    from src.bench.timing import EpochTimer
    from src.data.base import TransformedSubset
    from src.training.trainer import build_trainer

    with tempfile.TemporaryDirectory() as folder:
        cfg = quickstart_config([*overrides, f"paths.output_dir={folder}", f"paths.log_dir={folder}"])
        torch.manual_seed(cfg.seed)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        train = datamodule.data_train
        datamodule.data_train = TransformedSubset(
            train.dataset, list(train.indices) * train_repeats, train.transform
        )
        timer = EpochTimer("cpu")
        trainer = build_trainer(cfg, timer, *callbacks)
        trainer.fit(instantiate(cfg.module), datamodule=datamodule)
    return list(timer.seconds.values())


def framework_process(overrides: list[str]) -> dict:
    from src.bench.predict import run  # here: the loop's own process imports only what the loop needs

    with tempfile.TemporaryDirectory() as folder:
        wall, cpu, _ = run(["-m", "src.train", *QUICKSTART, f"paths.log_dir={folder}", *overrides])
        summary = json.loads(next(Path(folder).glob("**/summary.json")).read_text())
    return {
        "wall": wall,
        "cpu": cpu,
        "test_acc": summary["test"]["test/acc"],
        "epoch": summary["seconds_per_epoch"],
    }


SIDES = {"hand-written": hand_written_fit, "lightning": plain_lightning_fit}


def loop_process(settings: dict, side: str = "hand-written") -> dict:
    """One whole process of the hand-written loop, or of the same loop run by a bare Lightning Trainer."""
    from src.bench.predict import run

    wall, cpu, done = run(["-m", "src.bench.quickstart", "--side", side, json.dumps(settings)])
    result = json.loads(done.stdout.splitlines()[-1])
    return {
        "wall": wall,
        "cpu": cpu,
        "test_acc": result["test_acc"],
        "epoch": statistics.mean(result["epoch_seconds"]),
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def fastest(runs: list[dict]) -> float:
    return min(run["wall"] for run in runs)


def whole_process(overrides: list[str], repeats: int) -> list[str]:
    """The markdown table of `repeats` alternating whole-process runs of each side: vitlab, the loop in a bare
    Lightning Trainer, the hand-written loop."""
    settings = loop_settings(quickstart_config(overrides))
    # one unmeasured run of each first: the first process after a while reads torch's libraries from disk (a cold
    # page cache added up to 50 s to a run here), which is not the framework's cost
    framework_process([*overrides, "trainer.max_epochs=1"])
    for side in SIDES:
        loop_process({**settings, "epochs": 1}, side)
    runs: dict[str, list[dict]] = {"vitlab": [], "lightning": [], "hand-written": []}
    for repeat in range(repeats):
        runs["vitlab"].append(framework_process(overrides))
        for side in ("lightning", "hand-written"):
            runs[side].append(loop_process(settings, side))
        print(f"# run {repeat + 1}: " + ", ".join(f"{side} {r[-1]}" for side, r in runs.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    lines = [
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, {repeats} runs each, alternating; medians, "
        "and the fastest run's wall time (a slow spell of the host only ever slows a run)",
        "",
        "| | wall s | CPU s | s/epoch | test acc (each run) | fastest wall s |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "vitlab": "vitlab: python -m src.train experiment=quickstart",
        "lightning": "the loop in a bare Lightning Trainer",
        "hand-written": "hand-written loop",
    }
    for side, name in names.items():
        accs = ", ".join(f"{run['test_acc']:.4f}" for run in runs[side])
        medians = (median_of(runs[side], key) for key in ("wall", "cpu", "epoch"))
        lines.append(
            "| {} | {:.1f} | {:.1f} | {:.3f} | {} | {:.1f} |".format(
                name, *medians, accs, fastest(runs[side])
            )
        )
    for top, bottom in RATIOS:
        ratios = [
            median_of(runs[top], key) / median_of(runs[bottom], key) for key in ("wall", "cpu", "epoch")
        ]
        ratios.append(fastest(runs[top]) / fastest(runs[bottom]))
        lines.append("| ratio {} / {} | {:.3f} | {:.3f} | {:.3f} | | {:.3f} |".format(top, bottom, *ratios))
    return lines + ["", *per_run_lines(runs)]


def per_run_lines(runs: dict[str, list[dict]]) -> list[str]:
    """Each run's wall seconds, and the wall ratios of the runs made one after the other: a slow spell of the host
    then slows both sides of a ratio, so their median varies less than a ratio of medians."""
    triples = zip(*runs.values(), strict=True)
    each = "; ".join(" · ".join(f"{run['wall']:.1f}" for run in triple) for triple in triples)
    lines = [f"Each run, wall s ({' · '.join(runs)}): {each}.", ""]
    for top, bottom in RATIOS:
        ratios = [a["wall"] / b["wall"] for a, b in zip(runs[top], runs[bottom], strict=True)]
        lines.append(f"- wall {top} / {bottom} run by run: median {statistics.median(ratios):.3f} "
                     f"({min(ratios):.3f}–{max(ratios):.3f})")  # fmt: skip
    return lines


def growth(extra: list[str], epochs: int) -> list[str]:
    """The markdown table of seconds per epoch (the fastest epoch after the first: on a shared machine a stall of
    the host lands on one side's epoch, never makes one faster) against the training set's size and the batch
    size, in one process: vitlab's Trainer, the loop in a bare Lightning Trainer, the loop."""
    settings = loop_settings(quickstart_config([*extra, f"trainer.max_epochs={epochs}"]))
    lines = [
        f"s/epoch (the fastest of epochs 2..{epochs}, validation included); per step: the difference of s/epoch "
        "over the steps of an epoch",
        "",
        "| training set | batch | vitlab | Lightning | hand-written | vitlab / hand-written | "
        "vitlab - hand-written per step (ms) | Lightning - hand-written per step (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for repeats, batch in GROWTH_POINTS:
        overrides = [*extra, f"trainer.max_epochs={epochs}", f"data.batch_size={batch}"]
        ours = min(framework_fit(overrides, repeats)[1:])
        lightning = min(plain_lightning_fit({**settings, "batch_size": batch}, repeats)["epoch_seconds"][1:])
        loop_fit = hand_written_fit({**settings, "batch_size": batch}, repeats)
        loop, steps = min(loop_fit["epoch_seconds"][1:]), loop_fit["steps_per_epoch"]
        lines.append(f"| {repeats}x digits | {batch} | {ours:.3f} | {lightning:.3f} | {loop:.3f} | "
                     f"{ours / loop:.3f} | {(ours - loop) / steps * 1000:.2f} | "
                     f"{(lightning - loop) / steps * 1000:.2f} |")  # fmt: skip
    return lines


def imports(repeats: int) -> list[str]:
    """The markdown table of import seconds: the median wall time of `repeats` fresh interpreters for each line
    of IMPORTS, and from one `python -X importtime` run the cumulative seconds of the NESTED modules in it (the
    first import of a module is counted where it happens: torchvision under torchmetrics, say)."""
    from src.bench.predict import import_seconds, run

    lines = [
        f"import s: median of {repeats} fresh interpreters; the modules inside: one `-X importtime` run",
        "",
        f"| imports | wall s | {' | '.join(NESTED)} |",
        "|---" * (len(NESTED) + 2) + "|",
    ]
    for name, statement in IMPORTS.items():
        wall = statistics.median(run(["-c", statement])[0] for _ in range(repeats))
        nested = import_seconds(run(["-X", "importtime", "-c", statement])[2].stderr, NESTED)
        cells = " | ".join(f"{nested[module]:.2f}" if module in nested else "" for module in NESTED)
        lines.append(f"| {name}: `{statement}` | {wall:.2f} | {cells} |")
    return lines


def epoch_profile(extra: list[str], epochs: int) -> list[str]:
    """Markdown tables of cProfile's self time per epoch, by package and function, of the quickstart's fit (as
    `framework_fit` runs it, in this process) and of the loop in a bare Lightning Trainer, epochs 2.. (the first
    is left out: warm-up, the first checkpoint); vitlab's side as the whole-process runs are (the progress bar
    Lightning adds in place of conf's included)."""
    import cProfile

    from src.bench.report import difference_tables
    from src.bench.step_profile import ProfileFrom, difference

    overrides = [*extra, f"trainer.max_epochs={epochs}"]
    ours, theirs = cProfile.Profile(), cProfile.Profile()
    framework_fit(overrides, callbacks=[ProfileFrom(ours, epoch=1)])
    plain_lightning_fit(loop_settings(quickstart_config(overrides)), callbacks=[ProfileFrom(theirs, epoch=1)])
    profile = difference(ours, theirs, epochs - 1)
    lines = [
        f"cProfile's self time per epoch over epochs 2..{epochs} (training, validation, checkpoints; cProfile slows "
        "Python code far more than torch's kernels: where the time goes, not how much there is)",
        "",
        *difference_tables(profile, "vitlab", "bare Lightning", "epoch"),
    ]
    return "\n".join(lines).splitlines()  # one line each, as the other modes' tables


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for both sides, e.g. trainer.max_epochs=1"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--growth", action="store_true", help="s/epoch against training-set and batch size")
    parser.add_argument("--growth-epochs", type=int, default=4)
    parser.add_argument("--imports", action="store_true", help="import seconds of each side, and inside them")
    parser.add_argument(
        "--profile", action="store_true", help="self time per epoch of each Trainer, by package and function"
    )
    parser.add_argument("--profile-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, help="append the table, with the command and the machine's load")
    parser.add_argument(
        "--side", nargs=2, metavar=("SIDE", "SETTINGS"), help=argparse.SUPPRESS
    )  # a loop's own process
    args = parser.parse_args()
    if args.side:
        side, settings = args.side
        print(json.dumps(SIDES[side](json.loads(settings))))
        return
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    if args.imports:
        table = imports(args.repeats)
    elif args.growth:
        table = growth(args.overrides, args.growth_epochs)
    elif args.profile:
        table = epoch_profile(args.overrides, args.profile_epochs)
    else:
        table = whole_process(args.overrides, args.repeats)
    print("\n".join(table))
    if args.out:
        command = " ".join(["python -m src.bench.quickstart", *sys.argv[1:]])
        ending = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        section = ["", f"### {command}", "", f"- {os.cpu_count()} CPU cores; load average (1, 5, 15 min) at the start "
                   f"{load}, at the end {ending}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                   f"torch {torch.__version__}", "", *table, ""]  # fmt: skip
        with args.out.open("a") as file:
            file.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
