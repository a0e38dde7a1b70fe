"""TensorBoard itself (a real server on a loopback port, its JSON API and headless Chromium) after a tiny 2-job
learning-rate sweep: the HParams view lists the curated hyper-parameters and the numbers of summary.json and
src.compare; the scalars have the documented curves."""

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import matplotlib.image
import pytest
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer.record_writer import RecordWriter

from scripts.tensorboard_view import find_chromium, get, hparams_experiment, screenshot, serve, session_groups
from src.compare import comparison_rows
from src.reporting.hparams_table import curated_hparams, log_to_tensorboard
from tests.conftest import QUICK, ROOT, TINY_VIT, compose_config, run_cli

CURATED = {
    "model": "vit", "data": "digits", "freeze": "none", "optimizer": "adamw", "scheduler": "warmup_cosine",
    "data/image_size": 16, "data/effective_batch_size": 64, "trainer/max_epochs": 2,
    "optimizer/weight_decay": 0.05, "module/label_smoothing": 0.0, "seed": 42,
}  # fmt: skip
CURVES = {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc"}
needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="needs headless Chromium to photograph TensorBoard: apt-get install chromium",
)


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory) -> Path:
    """`src.train -m ... optimizer.lr=1e-3,3e-3`: two tiny digits runs of 2 short epochs (the multirun dir)."""
    log_dir = tmp_path_factory.mktemp("lr_sweep")
    result = run_cli(
        "src.train", "-m", "data=digits", *TINY_VIT, *QUICK, "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "trainer.log_every_n_steps=1",
        "optimizer.lr=1e-3,3e-3",
        f"paths.log_dir={log_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep


def scalars(url: str, run: str, tag: str) -> list[tuple[int, float]]:
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return [(step, value) for _, step, value in get(f"{url}/data/plugin/scalars/scalars?{query}")]


@pytest.mark.slow
def test_hparams_view_of_a_sweep_reads_at_a_glance(lr_sweep):
    with serve(lr_sweep, runs=2) as url:
        experiment = hparams_experiment(url)
        rows = {group["name"]: group for group in session_groups(url)}
        tags = get(f"{url}/data/plugin/scalars/tags")
        val_acc = {run: scalars(url, run, "val/acc") for run in rows}
        texts = get(f"{url}/data/plugin/text/tags")

    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    # the varied key first (TensorBoard shows the first 5 columns), then the rest by name; no config internals
    assert next(iter(infos)) == "optimizer/lr" and infos["optimizer/lr"]["differs"]
    assert not any(info["differs"] for name, info in infos.items() if name != "optimizer/lr")
    assert set(CURATED) | {"optimizer/lr", "model/params_total", "model/params_trainable"} <= set(infos)
    assert len(infos) <= 30, list(infos)
    assert not [name for name in infos if name.split("/")[0] in ("callbacks", "logger", "paths", "hydra")]
    assert infos["optimizer/lr"]["type"] == infos["data/image_size"]["type"] == "DATA_TYPE_FLOAT64"
    assert infos["model"]["type"] == "DATA_TYPE_STRING"

    metrics = [info["name"]["tag"] for info in experiment["metricInfos"]]
    assert metrics == [
        "hp/val/acc_best", "hp/test/acc", "hp/test/loss", "hp/test/macro_f1", "hp/seconds_per_epoch",
        "hp/peak_memory_mib",
    ]  # fmt: skip
    assert sorted(rows) == ["0/tensorboard", "1/tensorboard"]
    assert {row["hparams"]["optimizer/lr"] for row in rows.values()} == {1e-3, 3e-3}
    compared = {Path(row["dir"]).name: row for row in comparison_rows([lr_sweep / "0", lr_sweep / "1"])}
    for run, row in rows.items():
        job = run.split("/")[0]
        assert {name: row["hparams"][name] for name in CURATED} == CURATED
        summary = json.loads((lr_sweep / job / "summary.json").read_text())
        shown = {value["name"]["tag"]: value["value"] for value in row["metricValues"]}
        expected = {
            "hp/val/acc_best": summary["best_val_acc"],
            "hp/test/acc": summary["test"]["test/acc"],
            "hp/test/loss": summary["test"]["test/loss"],
            "hp/test/macro_f1": summary["test"]["test/macro_f1"],
            "hp/seconds_per_epoch": summary["seconds_per_epoch"],
            "hp/peak_memory_mib": summary["peak_memory_mib"],
        }
        assert shown == pytest.approx(expected, rel=1e-6)  # TensorBoard keeps float32
        # src.compare's table has the same numbers
        columns = ("best val acc", "test acc", "test loss", "macro F1", "s/epoch", "peak memory MiB")
        assert [compared[job][column] for column in columns] == list(expected.values())
        # the curves, one point per epoch after step 0; the best of them is the HParams view's best val/acc
        assert set(tags[run]) >= CURVES
        assert len(val_acc[run]) == 2 and all(step > 0 for step, _ in val_acc[run])
        assert max(value for _, value in val_acc[run]) == pytest.approx(summary["best_val_acc"], rel=1e-6)
        assert "config/text_summary" in texts[run]  # the whole composed config, as text


@pytest.mark.slow
@needs_chromium
def test_screenshot_of_the_hparams_view(lr_sweep, tmp_path):
    with serve(lr_sweep, runs=2) as url:
        screenshot(url, tmp_path / "hparams.png", size="1200,500", scale=1)
    image = matplotlib.image.imread(tmp_path / "hparams.png")
    assert image.shape[:2] == (500, 1200)
    assert image[..., :3].std() > 0.1  # a page was drawn, not a blank one


@pytest.mark.slow
@needs_chromium
def test_tensorboard_view_script_photographs_a_sweep_as_the_readme_shows(lr_sweep, tmp_path):
    """`scripts/tensorboard_view.py --logdir <dir> --out <png>`, as the README shows it: a picture of the sweep
    in <png>, and the README's own picture (the default --out) untouched."""
    readme_picture = (ROOT / "docs" / "tensorboard_hparams.png").read_bytes()
    out = tmp_path / "hparams.png"
    result = subprocess.run(
        [sys.executable, "scripts/tensorboard_view.py", "--logdir", str(lr_sweep), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (392, 1820)  # the default 2600x560 CSS pixels at scale 0.7
    assert image[..., :3].std() > 0.1  # a page was drawn, not a blank one
    assert (ROOT / "docs" / "tensorboard_hparams.png").read_bytes() == readme_picture


def test_curated_hparams_of_an_experiment_with_command_line_values(tmp_path):
    """Without a sweep: the experiment file's values and the command line's, with their types; an EMA callback's
    decay; the options of the recipe groups (augment, mixup, distill) at their defaults."""
    ema = [
        "+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging",
        "+callbacks.ema.decay=0.99",
    ]
    cfg = compose_config(
        "train",
        ["experiment=quickstart", "optimizer.lr=1e-3", "trainer=cpu", "data.num_workers=0", *ema],
        tmp_path,
    )
    model = instantiate(cfg.module)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    hparams = curated_hparams(trainer, cfg, model)
    assert {k: hparams[k] for k in ("experiment", "model", "data", "trainer", "optimizer", "scheduler")} == {
        "experiment": "quickstart", "model": "vit", "data": "digits", "trainer": "cpu", "optimizer": "adamw",
        "scheduler": "warmup_cosine",
    }  # fmt: skip
    # set by the command line (over the experiment's 3e-3), by the experiment file, and the fixed list
    assert hparams["optimizer/lr"] == 1e-3 and hparams["data/num_workers"] == 0
    assert (hparams["model/depth"], hparams["model/patch_size"], hparams["data/batch_size"]) == (4, 4, 64)
    assert hparams["trainer/max_epochs"] == 60 and hparams["data/effective_batch_size"] == 64
    assert hparams["model/params_trainable"] == sum(p.numel() for p in model.parameters())
    assert hparams["ema/decay"] == 0.99
    assert (hparams["augment"], hparams["mixup"], hparams["distill"]) == ("basic", "none", "none")
    assert not [name for name in hparams if name.split("/")[0] in ("callbacks", "logger", "paths", "hydra")]
    assert all(isinstance(value, bool | int | float | str) for value in hparams.values())
    assert len(hparams) <= 32, list(hparams)  # ~25, plus what this experiment file and command line set


def test_the_hparams_written_after_test_reach_the_event_file_before_the_process_ends(tmp_path, monkeypatch):
    """After `trainer.test` Lightning has closed the logger's SummaryWriter (finalize), so the headline numbers
    logged then go to a writer that torch opens anew, whose thread writes them to disk when it gets to them. On a
    busy machine a process that ends at once ended first: the last job of a sweep lost its HParams row. Here the
    writing thread is made slow, as there; what log_to_tensorboard logged must be on disk when it returns."""
    logger = TensorBoardLogger(tmp_path, name="", version="")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.finalize("success")  # what the trainer does at the end of fit and of test
    write = RecordWriter.write
    monkeypatch.setattr(RecordWriter, "write", lambda self, data: time.sleep(0.2) or write(self, data))
    log_to_tensorboard(logger, {"optimizer/lr": 1e-3}, {"hp/test/acc": 0.5}, varied={"optimizer/lr"})

    accumulator = EventAccumulator(str(tmp_path)).Reload()  # the files as they are on disk now
    assert set(accumulator.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info",
    }  # fmt: skip
    assert [event.value for event in accumulator.Scalars("hp/test/acc")] == [0.5]
