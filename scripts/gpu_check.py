"""Runs every CUDA path of vitlab once and measures it, within one time budget, on a bare GPU machine.

    bash scripts/gpu_check.sh                                      # there (installs the carried Hydra wheels first)
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/dry  # the dry run on a CPU (what the tests run)

1. data: CIFAR-10 in torchvision's on-disk format, of the real size (50 000 + 10 000 32 px images whose colour
   depends on the class: for speed, not accuracy), and a few PNG files for src.predict;
2. smoke: one short epoch of each CUDA path through `src.train` (bf16 + fused AdamW, torch.compile with the
   GPU-resident loader, channels_last VGG19, DeiT-B at 224 px), each followed by `src.eval` on its checkpoint and
   `src.predict` on the PNG files; the run's summary.json must say its peak memory was the GPU's;
3. test: tests/training/test_fast_paths.py's count of GPU syncs in training steps that log nothing (there must be none);
4. bench: `src.bench` per model (ours vs raw loop, MFU, compiled vs eager, seconds per 50 000-image epoch).
Each step prints one PASS/FAIL/SKIP line and has its own time limit; steps that would overrun `--budget` are
skipped, and `--only` reruns some (`--only smoke/vit_bf16,bench/`). <out>/gpu_check.json is rewritten after every
step (so a killed run still leaves its results), with <out>/benchmarks.md (src.bench's tables) and
<out>/gpu_check.log (every command's output); the data and the runs' folders go to `--work` (default <out>).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the data writer the tests use: the real CIFAR-10 on-disk format

from tests.fakes import write_fake_cifar10  # noqa: E402

TINY_VIT = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.mlp_dim=64"]


def smoke_runs(tiny: bool) -> dict[str, list[str]]:
    """The CUDA paths the issue names, as src.train overrides (the same on the CPU dry run, smaller)."""
    vit = TINY_VIT if tiny else []
    return {
        "vit_bf16": ["model=vit", *vit],
        "vit_compile_gpu_loader": ["model=vit", *vit, "model.compile=true", "data.loader=gpu"],
        "vgg19_channels_last": ["model=vgg19", "model.channels_last=true", "data.image_size=32"],
        "deit_224": ["model=deit", "model.pretrained=false", f"data.image_size={32 if tiny else 224}"],
    }


# the test that a training step which logs nothing reads nothing off the GPU (skipped on a CPU)
SYNC_TEST = ["tests/training/test_fast_paths.py", "-k", "does_not_wait_for_the_gpu"]

# model spec, batch size (the settings), timed steps (≥ 1 s of GPU work per measurement); one model per step,
# so that one that runs out of time (compiling DenseNet121 took over 100 s on an H200) leaves the others' rows
BENCH_RUNS = {
    "vit": ("vit:32", 512, 60),
    "deit": ("deit:224", 128, 30),
    "vgg19": ("vgg19:32", 128, 60),
    "densenet121": ("densenet121:32", 128, 60),
}


class Check:
    """Runs the steps, each with a limit, under one budget, and records what each did."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline, self.results = out, time.monotonic() + budget, {"steps": []}
        self.log = (out / "gpu_check.log").open("a")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")

    def step(self, name: str, limit: float, action) -> dict | None:
        """`action()` returns what it measured (a dict) or raises; one line says how it went."""
        record = {"step": name, "status": "SKIP", "seconds": 0.0}
        if self.left() < min(limit, 30):
            record["reason"] = f"budget: {self.left():.0f} s left"
        else:
            start = time.monotonic()
            try:
                record |= {"status": "PASS", **(action(min(limit, self.left())) or {})}
            except Exception as err:  # one step's failure is a result, not the end of the check
                record |= {"status": "FAIL", "reason": f"{type(err).__name__}: {err}"[-2000:]}
            record["seconds"] = round(time.monotonic() - start, 1)
        detail = record.get("reason", "")
        print(
            f"{record['status']} {name} ({record['seconds']} s){': ' + detail if detail else ''}", flush=True
        )
        self.results["steps"].append(record)
        self.save()
        return record

    def run(self, args: list[str], limit: float) -> str:
        """A `python -m ...` command; its output goes to the log, a non-zero exit or a timeout raises."""
        self.log.write(f"\n$ {' '.join(args)}\n")
        self.log.flush()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        try:
            done = subprocess.run(
                [sys.executable, "-m", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired as err:
            for output in (err.stdout, err.stderr):  # bytes on a timeout, even with text=True
                self.log.write(output.decode(errors="replace") if isinstance(output, bytes) else output or "")
            raise RuntimeError(f"timed out after {limit:.0f} s") from err
        self.log.write(done.stdout + done.stderr)
        self.log.flush()
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-1500:]}")
        return done.stdout


def write_data(root: Path, tiny: bool) -> dict:
    per_batch, test = (20, 20) if tiny else (10_000, 10_000)
    write_fake_cifar10(root, per_batch=per_batch, test_size=test)
    images = root / "images"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"image_{i}.png")
    return {"train_images": 5 * per_batch, "test_images": test}


def smoke(check: Check, name: str, overrides: list[str], args, data: Path, limit: float) -> dict:
    log_dir = args.work / "runs"
    limits = [
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]
    if not args.tiny:
        limits = [
            "+trainer.limit_train_batches=50",
            "+trainer.limit_val_batches=10",
            "+trainer.limit_test_batches=10",
        ]
    start = time.monotonic()
    check.run(
        ["src.train", *overrides, "data=cifar10", f"data.data_dir={data}", "data.download=false",
         "data.verify_checksums=false", f"data.batch_size={4 if args.tiny else 128}",
         f"data.val_size={20 if args.tiny else 5000}",
         f"data.num_workers={0 if args.tiny else 8}", "trainer=gpu", f"trainer.accelerator={args.device}",
         "trainer.max_epochs=1", *limits, "~callbacks.rich_progress_bar", f"task_name=smoke_{name}",
         f"paths.log_dir={log_dir}"],
        limit,
    )  # fmt: skip
    (run,) = (log_dir / f"smoke_{name}" / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    expected = "gpu" if args.device == "cuda" else "process_rss"
    if summary.get("peak_memory_of") != expected:
        raise RuntimeError(f"summary.json peak_memory_of={summary.get('peak_memory_of')!r}, not {expected!r}")
    checkpoint = next((run / "checkpoints").glob("epoch_*.ckpt"))
    left = limit - (time.monotonic() - start)
    check.run(["src.eval", f"ckpt_path={checkpoint}", "+trainer.limit_test_batches=2", "~callbacks.rich_progress_bar",
               f"paths.log_dir={log_dir}"], left / 2)  # fmt: skip
    predicted = check.run(["src.predict", f"ckpt_path={checkpoint}", f"inputs={data / 'images'}", "topk=3",
                           f"paths.log_dir={log_dir}"], left / 2)  # fmt: skip
    if "image_0.png" not in predicted:
        raise RuntimeError("src.predict listed no prediction for image_0.png")
    keys = ("seconds_per_epoch", "peak_memory_mib", "peak_memory_of")
    return {key: summary[key] for key in keys if key in summary} | {"test/acc": summary["test"]["test/acc"]}


def sync_test(check: Check, limit: float) -> dict:
    output = check.run(["pytest", "-q", "-p", "no:cacheprovider", *SYNC_TEST], limit)
    return {"pytest": output.strip().splitlines()[-1]}  # "1 passed in ...", or "1 skipped" on a CPU


def bench(check: Check, models: str, batch_size: int, steps: int, args, limit: float) -> dict:
    # the 50 000-image epoch is the scratch ViT's: timed once, with the ViT
    epoch_images = 50_000 if models.startswith("vit") else 0
    options = ["--batch-size", str(batch_size), "--steps", str(steps), "--warmup", "5", "--extras", "on",
               "--num-workers", "8", "--epoch-images", str(epoch_images)]  # fmt: skip
    if (
        args.tiny
    ):  # the extras' code is the same for every model: on a CPU, run it (compiling) for the tiny ViT
        vit = models.startswith("vit")
        models = "vit:16" if vit else models.replace("deit:224", "deit:32")
        options = ["--batch-size", "4", "--steps", "4", "--warmup", "1", "--repeats", "1", "--num-workers", "0",
                   "--extras", "on" if vit else "off", "--epoch-images", "64", "--epoch-batch-size", "32"]  # fmt: skip
        options += ["--overrides", *TINY_VIT] if vit else []
    check.run(["src.bench", "--device", args.device, "--models", models, *options,
               "--out", str(args.out / "benchmarks.md"), "--append"], limit)  # fmt: skip
    return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny data, models and steps: the CPU dry run")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check")
    parser.add_argument(
        "--work",
        type=Path,
        help="where the data and the runs' folders go (default: --out); gigabytes at full size",
    )
    parser.add_argument("--budget", type=float, default=540, help="seconds for all steps together")
    parser.add_argument(
        "--only", type=lambda text: text.split(","), default=[],
        help="comma-separated steps or their prefixes, e.g. smoke/vit_bf16,bench/ (a rerun of what failed)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.work = args.work or args.out
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.budget)
    slack = 4 if args.tiny else 1  # a CPU dry run compiles on 2 cores: its limits are looser
    import torch  # after the arguments: --help answers without it

    check.results["machine"] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        **{
            package: version(package)
            for package in ("torch", "lightning", "timm", "torchmetrics", "hydra-core")
        },
        "python": sys.version.split()[0],
        "tiny": args.tiny,
    }
    data = args.work / "data"
    steps = {"data": (120, lambda limit: write_data(data, args.tiny))}
    for name, overrides in smoke_runs(args.tiny).items():
        steps[f"smoke/{name}"] = (240 if "compile" in name else 150,
                                  lambda limit, n=name, o=overrides: smoke(check, n, o, args, data, limit))  # fmt: skip
    steps["test/no_gpu_sync"] = (120, lambda limit: sync_test(check, limit))
    for name, run in BENCH_RUNS.items():
        steps[f"bench/{name}"] = (240, lambda limit, r=run: bench(check, *r, args, limit))
    chosen = [name for name in steps if not args.only or any(name.startswith(prefix) for prefix in args.only)]
    if any(name.startswith("smoke/") for name in chosen) and "data" not in chosen:
        chosen.insert(0, "data")  # the smoke runs train on it
    for name in chosen:
        limit, action = steps[name]
        check.step(name, limit * slack, action)
    statuses = [step["status"] for step in check.results["steps"]]
    counts = {status: statuses.count(status) for status in ("PASS", "FAIL", "SKIP")}
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return 0 if counts["PASS"] == len(statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
