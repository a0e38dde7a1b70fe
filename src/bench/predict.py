"""How long `python -m src.predict` takes for one image, whole process, from an .onnx file and from a checkpoint:

    python -m src.bench.predict --ckpt <run>/checkpoints/last.ckpt --onnx <export run>/model.onnx --repeats 5

Three routes: the ONNX file (onnxruntime, no torch), the checkpoint (torch, no Lightning: the backbone rebuilt
from its plain hyper-parameters), and the same checkpoint without its preprocessing facts, as checkpoints written
before src.export were (Lightning's load_from_checkpoint, the only route before). For each: the median (min-max)
wall and CPU seconds of `--repeats` runs, and from one `python -X importtime` run the import time of the big
packages (cumulative, so nested ones overlap), which depends much less on other jobs' load than wall time."""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGES = ("torch", "torchvision", "timm", "lightning", "hydra", "onnxruntime", "numpy", "PIL", "rich")


def run(args: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds of one child process (`python <args>`), and what it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"error: {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result


def import_seconds(stderr: str, names: tuple[str, ...] = PACKAGES) -> dict[str, float]:
    """Cumulative import time of each module in `names`, from `-X importtime` lines."""
    found = {}
    for match in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", stderr):
        cumulative, name = int(match.group(1)), match.group(3)
        if name in names:
            found[name] = found.get(name, 0.0) + cumulative / 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--onnx", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch  # only here: the runs below are separate processes

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    image = work / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    old = torch.load(args.ckpt, weights_only=True)
    old.pop("preprocessing", None)
    torch.save(old, work / "without_preprocessing.ckpt")
    routes = {
        "ONNX (onnxruntime)": args.onnx,
        "checkpoint (torch, no Lightning)": args.ckpt,
        "checkpoint without preprocessing facts (Lightning)": work / "without_preprocessing.ckpt",
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    load = os.getloadavg()
    print(f"python -m src.bench.predict --ckpt {args.ckpt} --onnx {args.onnx} --repeats {args.repeats}\n")
    print(f"- {os.cpu_count()} CPU cores visible; load average (1, 5, 15 min) at the start: {load}")
    print("| route | wall s, median (min-max) | CPU s, median | import s: " + ", ".join(PACKAGES) + " |")
    print("|---|---|---|---|")
    for label, path in routes.items():
        command = [
            "-m",
            "src.predict",
            f"ckpt_path={path}",
            f"inputs={image}",
            f"paths.log_dir={work}",
            "topk=3",
        ]
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu, _ = run(command, env)
            walls.append(wall)
            cpus.append(cpu)
        imports = import_seconds(run(["-X", "importtime", *command], env)[2].stderr)
        shown = ", ".join(f"{name} {imports[name]:.2f}" for name in PACKAGES if name in imports)
        print(
            f"| {label} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) "
            f"| {statistics.median(cpus):.2f} | {shown} |"
        )
    print(f"\n- load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
