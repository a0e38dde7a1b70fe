"""Compare runs side by side: python -m src.compare <multirun dir | run dirs ...> [--out DIR]

Reads each run's summary.json (written after test by the report callback) and the sweep overrides in
.hydra/overrides.yaml, and writes comparison.md, comparison.csv and comparison.png (bar charts). Runs that differ
only by seed= or data.fold= are repeats of one configuration: comparison.md then also gives each group's
mean ± std (the sample standard deviation, ddof=1), min and max per metric, also in comparison_groups.csv; the
fold runs' out-of-fold predictions are joined into oof_predictions.csv, with each group's out-of-fold accuracy."""

import argparse
import csv
import json
import os
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from src.cli.exits import exit_on_user_error  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.reporting.out_of_fold import (  # noqa: E402
    OOF_PREDICTIONS,
    out_of_fold_accuracy,
    read_out_of_fold,
)
from src.reporting.run_metrics import HEADLINE  # noqa: E402
from src.runs.marks import INTERRUPTED  # noqa: E402


def _headline(name: str, fmt: str) -> tuple:
    """A column of run_metrics.HEADLINE: the value TensorBoard's HParams view shows as hp/<name>."""
    column, get = HEADLINE[name]
    return column, get, fmt


# (column, how to get it from summary.json, markdown format)
COLUMNS = [
    ("model", lambda s: s["model"], "{}"),
    ("data", lambda s: s["data"], "{}"),
    ("freeze", lambda s: s.get("freeze") or "none", "{}"),
    _headline("val/acc_best", "{:.4f}"),
    _headline("test/acc", "{:.4f}"),
    _headline("test/loss", "{:.4f}"),
    _headline("test/macro_f1", "{:.4f}"),
    _headline("val/map_best", "{:.4f}"),
    _headline("test/map", "{:.4f}"),
    ("params", lambda s: s["params_total"], "{:,}"),
    ("trainable params", lambda s: s["params_trainable"], "{:,}"),
    _headline("seconds_per_epoch", "{:.1f}"),
    ("test s", lambda s: s["test_seconds"], "{:.1f}"),
    _headline("peak_memory_mib", "{:,.0f}"),
]
# the columns a group of repeated runs is summarised by (mean ± std, min, max)
STATISTICS = [column for column, _ in HEADLINE.values()]
# multi-label columns: in the tables only when some run has them (single-label comparisons stay as they were)
MULTILABEL_ONLY = ("best val mAP", "test mAP")
# overrides that repeat a configuration rather than change it
REPEATS = ("seed=", "data.fold=")
CHARTS = ["test acc", "macro F1", "s/epoch", "test s", "peak memory MiB", "trainable params"]


def _natural(path: Path) -> list[tuple[int, int | str]]:
    """Sort key that puts multirun job 10 after job 9."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.parts]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run dirs (those with a summary.json) at or below each path: run dirs themselves, multirun dirs, outputs/."""
    runs = []
    for path in paths:
        if (path / "summary.json").is_file():
            runs.append(path)
        else:
            runs += sorted((p.parent for p in path.rglob("summary.json")), key=_natural)
    stopped = _interrupted(paths)
    if not runs:
        raise UserError(
            f"no summary.json found in {', '.join(map(str, paths))}{stopped}: pass run dirs or a multirun dir of "
            "runs that finished testing (src.train / src.eval write summary.json after test)"
        )
    if stopped:
        print(f"left out{stopped}")
    return runs


def _interrupted(paths: list[Path]) -> str:
    """` N interrupted runs (...): their INTERRUPTED files say how to resume them` for the runs at or below
    `paths` that a signal or a full disk stopped before their summary.json (src/runs/interrupts.py), else ''."""
    runs = sorted(
        {p.parent for path in paths for p in [path / INTERRUPTED, *path.rglob(INTERRUPTED)] if p.is_file()}
        - {p.parent for path in paths for p in path.rglob("summary.json")},
        key=_natural,
    )
    if not runs:
        return ""
    return f" {len(runs)} interrupted run(s) ({', '.join(map(str, runs))}): their {INTERRUPTED} files say how to resume them"


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    # as written: resolving would read the environment (${oc.env:...}) of whoever compares a downloaded run
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's command-line overrides that differ between the runs (e.g. `model=vgg19`), else its folder."""
    overrides = [_overrides(run) for run in runs]
    shared = set.intersection(*map(set, overrides)) if len(runs) > 1 else set()
    labels = [" ".join(o for o in run_overrides if o not in shared) for run_overrides in overrides]
    return [label or run.name for label, run in zip(labels, runs, strict=True)]


def group_labels(runs: list[Path]) -> list[str]:
    """Each run's configuration: its overrides that differ between the runs, without seed= and data.fold=."""
    overrides = [[o for o in _overrides(run) if not o.startswith(REPEATS)] for run in runs]
    shared = set.intersection(*map(set, overrides))
    return [" ".join(o for o in run_overrides if o not in shared) or "all" for run_overrides in overrides]


def out_of_fold_predictions(runs: list[Path], groups: list[str]) -> list[dict]:
    """The oof_predictions.csv of the fold runs, one after the other, each row with its run's group."""
    return [
        {"group": group, **row}
        for run, group in zip(runs, groups, strict=True)
        for row in read_out_of_fold(run) or []
    ]


def group_statistics(rows: list[dict], groups: list[str], oof: list[dict] = ()) -> list[dict]:
    """Per group of two or more runs: how many, each STATISTICS column's mean, std (ddof=1), min and max over
    the runs that have it, and the accuracy of the group's out-of-fold predictions (`oof`), where it has them."""
    members: dict[str, list[dict]] = {}
    for row, group in zip(rows, groups, strict=True):
        members.setdefault(group, []).append(row)
    table = []
    for group, group_rows in members.items():
        if len(group_rows) < 2:
            continue
        stats: dict = {"group": group, "runs": len(group_rows)}
        for name in _statistics(rows):
            values = np.array([row[name] for row in group_rows if row[name] is not None], dtype=float)
            has_two = len(values) > 1
            stats |= {
                f"{name} mean": values.mean() if has_two else None,
                f"{name} std": values.std(ddof=1) if has_two else None,
                f"{name} min": values.min() if has_two else None,
                f"{name} max": values.max() if has_two else None,
            }
        group_oof = [row for row in oof if row["group"] == group]
        stats["OOF acc"] = out_of_fold_accuracy(group_oof) if group_oof else None
        table.append(stats)
    return table


def _statistics(rows: list[dict]) -> list[str]:
    return [name for name in STATISTICS if name in rows[0]]


def statistics_markdown(table: list[dict]) -> str:
    statistics = [name for name in STATISTICS if f"{name} mean" in table[0]]
    header = ["group", "runs", *statistics, "OOF acc"]
    lines = [
        "Repeated runs (the same overrides but seed= and data.fold=): mean ± std (sample, ddof=1) [min, max]",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for stats in table:
        cells = [
            f"{stats[f'{name} mean']:.4g} ± {stats[f'{name} std']:.2g} "
            f"[{stats[f'{name} min']:.4g}, {stats[f'{name} max']:.4g}]"
            if stats[f"{name} mean"] is not None
            else ""
            for name in statistics
        ]
        oof = "" if stats["OOF acc"] is None else f"{stats['OOF acc']:.4g}"
        lines.append("| " + " | ".join([stats["group"], str(stats["runs"]), *cells, oof]) + " |")
    return "\n".join(lines) + "\n"


def read_summary(path: Path) -> dict:
    """A run's summary.json; one that is no JSON object (cut short by a full disk, edited) is a UserError."""
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        summary = err
    if not isinstance(summary, dict):
        problem = summary if isinstance(summary, Exception) else f"a JSON {type(summary).__name__}"
        raise UserError(
            f"{path} is not a summary.json that src.train or src.eval wrote ({problem}): leave its run out, or "
            f"write it again with python -m src.eval ckpt_path={path.parent}/checkpoints/<best>.ckpt"
        )
    return summary


def comparison_rows(runs: list[Path]) -> list[dict]:
    """A row per run: its label, the COLUMNS it has (empty where not; the multi-label ones only where some run
    has them) and its folder."""
    rows = []
    for run, label in zip(runs, run_labels(runs), strict=True):
        summary = read_summary(run / "summary.json")
        rows.append({"run": label, **{name: get(summary) for name, get, _ in COLUMNS}, "dir": str(run)})
    for name in MULTILABEL_ONLY:
        if all(row[name] is None for row in rows):
            for row in rows:
                del row[name]
    return rows


def _columns(rows: list[dict]) -> list[tuple]:
    return [column for column in COLUMNS if column[0] in rows[0]]


def to_markdown(rows: list[dict]) -> str:
    columns = _columns(rows)
    header = ["run", *(name for name, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        cells = [
            row["run"],
            *(fmt.format(row[name]) if row[name] is not None else "" for name, _, fmt in columns),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        # every row's columns: out-of-fold predictions of data sets with other classes have other ones
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)


def plot_bars(rows: list[dict], path: Path) -> None:
    """Bar charts of CHARTS; with multi-label runs among them, their test mAP in place of the macro F1 (which
    only single-label runs have). A run without a chart's number has no bar there, labelled n/a."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    labels = [row["run"] for row in rows]
    charts = [("test mAP" if name == "macro F1" and "test mAP" in rows[0] else name) for name in CHARTS]
    for ax, name in zip(axes.flat, charts, strict=True):
        values = [row[name] for row in rows]
        heights = [np.nan if value is None else value for value in values]
        ax.bar(range(len(rows)), heights, color=[f"C{i}" for i in range(len(rows))])
        bar_labels = ["n/a" if value is None else f"{value:.4g}" for value in values]
        ax.bar_label(ax.containers[0], labels=bar_labels, fontsize=8)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@exit_on_user_error
def compare(paths: list[Path], out: Path | None = None) -> list[dict]:
    runs = find_runs(paths)
    rows = comparison_rows(runs)
    out = out or Path(os.path.commonpath([p.resolve() for p in paths]))
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file: pass a folder (comparison.md, .csv and .png are written into it)"
        )
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows)
    groups = group_labels(runs)
    written = ["comparison.csv"]
    if oof := out_of_fold_predictions(runs, groups):
        write_csv(oof, out / OOF_PREDICTIONS)
        written.append(f"{OOF_PREDICTIONS} ({len(oof)} out-of-fold predictions)")
    if statistics := group_statistics(rows, groups, oof):
        markdown += "\n" + statistics_markdown(statistics)
        write_csv(statistics, out / "comparison_groups.csv")
        written.append("comparison_groups.csv")
    (out / "comparison.md").write_text(markdown)
    write_csv(rows, out / "comparison.csv")
    plot_bars(rows, out / "comparison.png")
    print(markdown)
    print(f"wrote {out / 'comparison.md'}, {', '.join(written)} and comparison.png ({len(rows)} runs)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs, multirun dirs, or any folder of runs")
    parser.add_argument(
        "--out", type=Path, help="where to write comparison.{md,csv,png} (default: the common folder)"
    )
    args = parser.parse_args(argv)
    compare(args.paths, args.out)


if __name__ == "__main__":
    main()
