"""Measures configurations on scikit-learn's digits (the one real data set that needs no download): each through
`python -m src.train`, over several seeds; prints a markdown table of test accuracy (mean ± half the range over
seeds) and wall seconds per run. A configuration in several tables runs once.

    python scripts/digits_table.py recipes --seeds 42 1 2 --out /tmp/digits   # the training-recipe components
    python scripts/digits_table.py token_learner                              # TokenLearner and downsampling
    python scripts/digits_table.py recipes --only quickstart_cct
    python scripts/digits_table.py distillation --teacher <a src.train checkpoint on data=digits>
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ["experiment=quickstart"]
# digits-sized (16 px, 8 px patches: 2x2 patches + class + distillation token), the same budget for every mode
STUDENT = [
    "data=digits",
    "model=deit_tiny",
    "data.image_size=16",
    "model.patch_size=8",
    "trainer.max_epochs=20",
]
TEACHER = "distill.teacher_ckpt={teacher}"
# table -> (row name, overrides)
TABLES = {
    # the quickstart, each recipe component alone, all together, and the small CCT (docs/training.md)
    "recipes": {
        "quickstart": QUICKSTART,
        "+ augment=randaugment": [*QUICKSTART, "augment=randaugment"],
        "+ mixup=mixup_cutmix": [*QUICKSTART, "mixup=mixup_cutmix"],
        # 1 200 steps: decay 0.99 (an average over ~100 steps), as conf/callbacks/ema.yaml advises for short runs
        "+ EMA 0.99": [*QUICKSTART, "callbacks=[default,ema]", "callbacks.ema.decay=0.99"],
        "+ all three": [
            *QUICKSTART,
            "augment=randaugment",
            "mixup=mixup_cutmix",
            "callbacks=[default,ema]",
            "callbacks.ema.decay=0.99",
        ],
        "quickstart_cct": ["experiment=quickstart_cct"],
    },
    # fewer tokens part-way through the quickstart's ViT (docs/token_learner.md)
    "token_learner": {
        "quickstart": QUICKSTART,
        "TokenLearner S=4 after block 2": [
            "experiment=tokenlearner_digits",
            "model.token_learner.num_tokens=4",
        ],
        "TokenLearner S=8 after block 2 (tokenlearner_digits)": ["experiment=tokenlearner_digits"],
        "downsample 4→3 after block 2, width 128": [
            *QUICKSTART,
            "model.downsample=[{after:2,size:3,dim:128}]",
        ],
    },
    # a distilled DeiT-Ti from random weights, taught by --teacher or not (docs/distillation.md)
    "distillation": {
        "none (the label trains both heads)": [*STUDENT, "distill=none"],
        "hard (α 0.5)": [*STUDENT, "distill=hard", TEACHER],
        "soft (α 0.5, τ 1)": [*STUDENT, "distill=soft", TEACHER],
    },
}
# columns beyond test accuracy, from each run's summary.json
EXTRA_METRICS = {"distillation": ["test/acc_cls", "test/acc_dist", "test/teacher_agreement"]}


def run(overrides: list[str], seed: int, log_dir: Path) -> tuple[dict, float]:
    """(test metrics, wall seconds) of one training run."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "src.train", *overrides, f"seed={seed}", f"paths.log_dir={log_dir}",
         "~callbacks.rich_progress_bar"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{overrides} seed {seed} failed:\n{result.stderr[-2000:]}")
    summary = max(log_dir.glob("*/runs/*/summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(summary.read_text())["test"], seconds


def spread(values: list[float | None]) -> str:
    """mean ± half the range, in %; a metric the runs did not log: —"""
    if None in values:
        return "—"
    values = [100 * v for v in values]
    return f"{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tables", nargs="+", choices=list(TABLES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--only", nargs="+", help="row names: run only these")
    parser.add_argument("--out", type=Path, default=Path("outputs/digits_table"))
    parser.add_argument("--teacher", help="the teacher checkpoint of the distillation table")
    args = parser.parse_args(argv)
    if "distillation" in args.tables and not args.teacher:
        parser.error("the distillation table needs --teacher <a checkpoint of src.train on data=digits>")
    done: dict[tuple[str, ...], list[tuple[dict, float]]] = {}
    for table in args.tables:
        extra = EXTRA_METRICS.get(table, [])
        print(f"\n{table}\n")
        print(
            "| configuration | test acc % (mean ± half-range) | per seed | s/run (mean) |"
            + "".join(f" {m} % |" for m in extra)
        )
        print("|---|---|---|---|" + "---|" * len(extra))
        for name, overrides in TABLES[table].items():
            if args.only and name not in args.only:
                continue
            overrides = [o.replace("{teacher}", str(args.teacher)) for o in overrides]
            key = tuple(overrides)
            if key not in done:
                folder = args.out / f"{table}_{len(done)}"
                done[key] = [run(overrides, seed, folder / f"seed{seed}") for seed in args.seeds]
            metrics = [m for m, _ in done[key]]
            per_seed = ", ".join(f"{100 * m['test/acc']:.1f}" for m in metrics)
            seconds = statistics.mean(s for _, s in done[key])
            columns = "".join(f" {spread([m.get(e) for m in metrics])} |" for e in extra)
            print(
                f"| {name} | {spread([m['test/acc'] for m in metrics])} | {per_seed} | {seconds:.0f} |{columns}",
                flush=True,
            )


if __name__ == "__main__":
    main()
