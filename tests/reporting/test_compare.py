"""src.compare over the two runs of a tiny `src.train -m` sweep: a table with both rows (markdown, CSV, PNG)."""

import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from src.compare import main, run_labels
from src.reporting.artefacts import write_summary
from src.upstream_fixes.disk_space import DiskFullError
from tests.conftest import run_cli


@pytest.mark.slow
def test_compare_a_multirun_dir(tiny_sweep):
    result = run_cli("src.compare", str(tiny_sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (tiny_sweep / "comparison.md").read_text()
    assert markdown in result.stdout
    assert markdown.splitlines()[0] == (
        "| run | model | data | freeze | best val acc | test acc | test loss | macro F1 | params | trainable params "
        "| s/epoch | test s | peak memory MiB |"
    )
    with open(tiny_sweep / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # one row per job, labelled by the override that differs between them
    assert [row["run"] for row in rows] == ["model.depth=1", "model.depth=2"]
    for job, row in enumerate(rows):
        summary = json.loads((tiny_sweep / str(job) / "summary.json").read_text())
        assert (row["model"], row["data"], row["freeze"]) == ("vit", "digits", "none")
        assert float(row["test acc"]) == pytest.approx(summary["test"]["test/acc"])
        assert float(row["macro F1"]) == pytest.approx(summary["test"]["test/macro_f1"])
        assert int(row["trainable params"]) == summary["params_trainable"]
        assert (
            f"| model.depth={job + 1} | vit | digits | none | {summary['best_val_acc']:.4f} "
            f"| {summary['test']['test/acc']:.4f} |" in markdown
        )
    assert int(rows[1]["params"]) > int(rows[0]["params"])  # depth 2 has one more transformer block
    assert matplotlib.image.imread(tiny_sweep / "comparison.png").shape[:2] == (800, 1500)


def test_compare_run_dirs_into_out(tiny_sweep, tmp_path, capsys):
    main([str(tiny_sweep / "1"), str(tiny_sweep / "0"), "--out", str(tmp_path)])
    with open(tmp_path / "comparison.csv", newline="") as f:
        assert [row["dir"] for row in csv.DictReader(f)] == [str(tiny_sweep / "1"), str(tiny_sweep / "0")]
    assert "(2 runs)" in capsys.readouterr().out


def test_compare_without_runs_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no summary.json found" in capsys.readouterr().err


def test_compare_out_must_be_a_folder(tiny_sweep, tmp_path, capsys):
    (tmp_path / "taken").write_text("a user's file")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_sweep), "--out", str(tmp_path / "taken")])
    assert exit_info.value.code == 2 and "is a file: pass a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a user's file"


def test_run_labels_are_the_overrides_as_written_not_resolved(tmp_path, monkeypatch):
    """A run folder from elsewhere: its overrides.yaml must not read this machine's environment."""
    monkeypatch.setenv("VITLAB_TEST_SECRET", "s3cret")
    for name, depth in (("a", "1"), ("b", "${oc.env:VITLAB_TEST_SECRET}")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- model.depth={depth}\n- data=digits\n")
    labels = run_labels([tmp_path / "a", tmp_path / "b"])
    assert labels == ["model.depth=1", "model.depth=${oc.env:VITLAB_TEST_SECRET}"]


@pytest.mark.parametrize("text", ['{"model": "vit", "test": {"test/a', "[1, 2]\n", "\xff\xfe"])
def test_compare_names_a_summary_json_that_is_cut_short_or_no_summary(text, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith(
        f"error: {tmp_path / 'run' / 'summary.json'} is not a summary.json that src.train"
    )


def test_summary_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_summary({"test": {"test/acc": 0.5}}, path)

    def cut_short(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", cut_short)
    with pytest.raises(DiskFullError):
        write_summary({"test": {"test/acc": 0.9}}, path)
    assert json.loads(path.read_text()) == {"test": {"test/acc": 0.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_compare_names_the_interrupted_runs_it_leaves_out(tiny_sweep, tmp_path, capsys):
    stopped = tmp_path / "2"
    stopped.mkdir()
    (stopped / "INTERRUPTED").write_text("stopped by SIGTERM. ...\n")
    main([str(tiny_sweep / "0"), str(tmp_path), "--out", str(tmp_path / "out")])
    assert (
        f"left out 1 interrupted run(s) ({stopped}): their INTERRUPTED files say how"
        in capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    error = capsys.readouterr().err
    assert "no summary.json found" in error and "1 interrupted run(s)" in error


def write_run(run, overrides: list[str], test_acc: float, test_loss: float) -> None:
    """A run dir as src.train leaves it, as far as src.compare reads it."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    summary = {
        "model": "vit", "data": "digits", "best_val_acc": test_acc + 0.01, "params_total": 100,
        "params_trainable": 100, "seconds_per_epoch": 1.0, "test_seconds": 0.5, "peak_memory_mib": None,
        "test": {"test/acc": test_acc, "test/loss": test_loss, "test/macro_f1": test_acc - 0.02},
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))


def test_compare_gives_mean_std_min_max_of_runs_that_differ_only_by_seed_or_fold(tmp_path, capsys):
    accuracies = {"model.depth=1": [0.81, 0.85, 0.78], "model.depth=2": [0.9, 0.93]}
    job = 0
    for depth, values in accuracies.items():
        for repeat, acc in enumerate(values):
            repeated = f"seed={repeat}" if depth.endswith("1") else f"data.fold={repeat}"
            write_run(tmp_path / str(job), [depth, repeated, "data=digits"], acc, 1 - acc)
            job += 1
    main([str(tmp_path)])
    with open(tmp_path / "comparison_groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert [(g["group"], g["runs"]) for g in groups] == [("model.depth=1", "3"), ("model.depth=2", "2")]
    for group, values in zip(groups, accuracies.values(), strict=True):
        assert float(group["test acc mean"]) == pytest.approx(np.mean(values))
        assert float(group["test acc std"]) == pytest.approx(np.std(values, ddof=1))
        assert float(group["test loss std"]) == pytest.approx(np.std(values, ddof=1))
        assert (float(group["test acc min"]), float(group["test acc max"])) == (min(values), max(values))
        assert group["peak memory MiB mean"] == ""  # not measured (a CPU run): no statistic
    markdown = (tmp_path / "comparison.md").read_text()
    assert markdown in capsys.readouterr().out
    mean, std = np.mean(accuracies["model.depth=1"]), np.std(accuracies["model.depth=1"], ddof=1)
    assert f"| model.depth=1 | 3 | {mean + 0.01:.4g} ± {std:.2g} " in markdown  # best val acc first
    assert f"{mean:.4g} ± {std:.2g} [0.78, 0.85]" in markdown


def test_compare_of_runs_that_all_differ_writes_no_group_statistics(tmp_path):
    for job, depth in enumerate((1, 2)):
        write_run(tmp_path / str(job), [f"model.depth={depth}", "seed=0"], 0.8, 0.2)
    main([str(tmp_path)])
    assert not (tmp_path / "comparison_groups.csv").exists()
    assert "Repeated runs" not in (tmp_path / "comparison.md").read_text()
