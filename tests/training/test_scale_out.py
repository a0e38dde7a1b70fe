"""Scaling out through the real CLI: DDP with two gloo processes, sweeps (Hydra multirun, Optuna), and
resuming a killed run with ckpt_path=last. Plus the SLURM launcher and Optuna configs compose."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.train import train
from src.upstream_fixes.hydra import config_flags
from tests.conftest import (
    CONF,
    EVERY_STEP_CHECKPOINTS,
    QUICK,
    ROOT,
    TINY_VIT,
    compose_config,
    run_cli,
    run_dirs,
)

FEW_BATCHES = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2"]
REPORT_FILES = (
    "report.md",
    "report.csv",
    "confusion_matrix.png",
    "curves.png",
    "misclassified.png",
    "summary.json",
)


def scalars(events_path: Path, tag: str) -> list:
    events = EventAccumulator(str(events_path))
    events.Reload()
    return events.Scalars(tag) if tag in events.Tags()["scalars"] else []


def assert_complete_job(run_dir: Path) -> None:
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"last.ckpt"}
    assert len(list((run_dir / "checkpoints").glob("epoch_*.ckpt"))) == 1
    assert scalars(run_dir / "tensorboard", "val/acc") and scalars(run_dir / "tensorboard", "test/acc")
    assert [
        p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()
    ] == []  # one version: the folder itself
    for name in REPORT_FILES:
        assert (run_dir / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def best_val_acc(run_dir: Path) -> float:
    """best_model_score of the val/acc ModelCheckpoint, as stored in the run's last checkpoint."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = (
        s for k, s in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/acc'")
    )
    return float(state["best_model_score"])


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "gpu"])
def test_ddp_on_two_cpu_processes_makes_one_run(loader, tmp_path):
    result = run_cli(
        "src.train", "data=digits", f"data.loader={loader}", "trainer=ddp", "trainer.devices=2", *TINY_VIT,
        *QUICK, *FEW_BATCHES, f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["runs"]
    (run_dir,) = run_dirs(tmp_path, "train")  # both ranks wrote into the one folder
    assert_complete_job(run_dir)
    assert result.stdout.count("Classification report (test)") == 1  # written by rank 0 only
    # each rank tested its own half of the 360 test images; the report has them all
    supports = [line.rsplit(",", 1)[1] for line in (run_dir / "report.csv").read_text().splitlines()]
    assert supports[-3:] == ["360"] * 3  # accuracy, macro avg, weighted avg
    hparams = yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["data/effective_batch_size"] == 2 * 64 and hparams["trainer"] == "ddp"


@pytest.mark.slow
def test_ddp_refuses_unfreezing_at_an_epoch(tmp_path):
    result = run_cli(
        "src.train", "data=digits", "trainer=ddp", "trainer.devices=2", "freeze=head_only",
        "freeze.unfreeze_at_epoch=1", *TINY_VIT, *QUICK, f"paths.log_dir={tmp_path}", timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("error: freeze.unfreeze_at_epoch=1 does not work with 2 processes") == 1
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("**/*.ckpt"))


def test_multirun_gives_one_complete_run_dir_per_job(tiny_sweep):
    assert sorted(p.name for p in tiny_sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert_complete_job(tiny_sweep / job)
    assert [p.name for p in (tiny_sweep.parents[1]).iterdir()] == ["multiruns"]  # no stray run dirs


@pytest.mark.slow
def test_a_sweep_writes_below_the_folder_it_was_started_from(tmp_path):
    """The README's sweep command as typed (no paths.log_dir), shortened: the sweep's folder is resolved before
    Hydra's ${hydra:runtime.cwd} works, so conf/paths uses our own ${cwd:}; the experiment's task_name names it,
    as the README says (outputs/quickstart/multiruns/<time>/<job number>)."""
    result = run_cli(
        "src.train", "-m", "experiment=quickstart", "seed=1,2", *TINY_VIT, *QUICK,
        "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["quickstart"]
    (sweep,) = (tmp_path / "outputs" / "quickstart" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.slow
def test_optuna_sweep_reports_the_best_validation_accuracy(tmp_path):
    result = run_cli(
        "src.train", "hparams_search=vit_optuna", "hydra.sweeper.n_trials=2", "data=digits", *TINY_VIT, *QUICK,
        "trainer.max_epochs=2", *FEW_BATCHES, f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert_complete_job(job)
    # two different trials (the seeded TPE sampler), and the sweep's best is the best epoch's val/acc
    params = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) for job in jobs]
    assert params[0] != params[1] and any(o.startswith("optimizer.lr=") for o in params[0])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(best_val_acc(job) for job in jobs))


# a trial whose accuracy moves within 4 short epochs: the searched values fixed (a fixed value wins over the space)
LEARNING_TRIAL = ["optimizer.lr=0.003", "data.batch_size=64", "augment=basic", "augment.random_erasing=0.0",
                  "mixup.prob=0.0", "model.drop_path=0.0", "scheduler.schedule.warmup_fraction=0.0"]  # fmt: skip


@pytest.mark.slow
def test_optuna_trial_value_is_the_kept_checkpoints_when_it_is_chosen_by_another_metric(tmp_path):
    """The quickstart keeps the epoch of lowest val/loss; a search maximising val/acc must score each trial by
    the kept epoch's val/acc, not by the last epoch's. Here the run keeps the epoch of highest val/loss (the
    first), so that the kept and the last epoch differ."""
    result = run_cli(
        "src.train", "hparams_search=vit_optuna", "hydra.sweeper.n_trials=1", "data=digits", *TINY_VIT, *QUICK,
        "trainer.max_epochs=4", "+trainer.limit_train_batches=8", *LEARNING_TRIAL, "callbacks.model_checkpoint.monitor=val/loss",
        "callbacks.model_checkpoint.mode=max", f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    events = sweep / "0" / "tensorboard"
    # per epoch (the validation pass after fit logs once more, at the last step: left out)
    losses = [e.value for e in scalars(events, "val/loss")][:4]
    accuracies = [e.value for e in scalars(events, "val/acc")][:4]
    kept_epoch = losses.index(max(losses))
    assert accuracies[kept_epoch] != accuracies[-1]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(accuracies[kept_epoch], abs=1e-6)


@pytest.mark.slow
def test_optuna_sweep_of_ddp_jobs_makes_one_sweep(tmp_path):
    """hparams_search sets hydra.mode=MULTIRUN in the config: the DDP rank Lightning starts for a trial must run
    that trial, not a sweep of its own."""
    result = run_cli(
        "src.train", "hparams_search=vit_optuna", "hydra.sweeper.n_trials=1", "data=digits", "trainer=ddp",
        "trainer.devices=2", *TINY_VIT, *QUICK, *FEW_BATCHES, f"paths.log_dir={tmp_path}", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["multiruns"]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert [p.name for p in sweep.iterdir() if p.is_dir()] == ["0"]
    assert_complete_job(sweep / "0")


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint_in_its_run_dir(tmp_path):
    args = ["data=digits", *TINY_VIT, *QUICK, "trainer.max_epochs=6", "+trainer.limit_train_batches=6",
            "+trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "test=false",
            f"paths.log_dir={tmp_path}", "ckpt_path=last"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "src.train", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        while not list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt")) and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert "No last.ckpt of task 'train'" in (tmp_path / "first.log").read_text()  # ckpt_path=last: fresh
    (run_dir,) = run_dirs(tmp_path, "train")
    killed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert killed["epoch"] < 5, "the first run finished before it was killed"
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    events_before = set((run_dir / "tensorboard").glob("events.*"))

    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in result.stdout
    assert run_dirs(tmp_path, "train") == [run_dir]  # continued in the same folder
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (5, 6 * 6)
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config  # the original config is kept
    (resumed_config,) = (run_dir / ".hydra").glob("resumed_*/config.yaml")
    assert yaml.safe_load(resumed_config.read_text())["ckpt_path"] == "last"
    # TensorBoard continues in the same folder, from the checkpoint's step and epoch on
    new_events = set((run_dir / "tensorboard").glob("events.*")) - events_before
    steps = [s.step for path in new_events for s in scalars(path, "train/loss_step")]
    epochs = [int(s.value) for path in new_events for s in scalars(path, "epoch")]
    assert min(steps) >= killed["global_step"] and max(steps) == 6 * 6 - 1
    assert min(epochs) == killed["epoch"] + 1 and max(epochs) == 5


def test_a_fit_resumed_mid_epoch_still_logs_its_training_metrics(tmp_path):
    """A mid-epoch checkpoint (every_n_train_steps here; Lightning's SLURM requeue saves one too) resumes at
    batch 3 of epoch 0: the epoch's train accuracy must still be computed and logged."""
    args = ["data=digits", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=5", "+trainer.limit_val_batches=1",
            "test=false", "+callbacks.last_checkpoint.every_n_train_steps=3"]  # fmt: skip
    train(compose_config("train", args, tmp_path / "first"))
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 3)  # saved inside the epoch, not at its end
    resumed = train(compose_config("train", [*args, f"ckpt_path={checkpoint}"], tmp_path / "resumed"))
    assert 0 <= resumed["train/acc"] <= 1 and "train/loss_epoch" in resumed and "val/acc" in resumed


# warmup_cosine asks for trainer.estimated_stepping_batches, which stops Lightning 2.6 restoring loaders itself
@pytest.mark.parametrize("scheduler", ["warmup_cosine", "none"])
def test_gpu_loader_fit_resumed_mid_epoch_ends_with_the_uninterrupted_weights(scheduler, tmp_path):
    """data.loader=gpu keeps its place in checkpoints: resuming at step 7 (2 batches into epoch 1 of 5-batch
    epochs) gives the same batches, augmentations included, so the same weights after step 10, bit for bit."""
    args = ["data=digits", "data.loader=gpu", "data.batch_size=256", f"scheduler={scheduler}", *TINY_VIT,
            "model.drop_path=0", *QUICK,
            "trainer.max_epochs=2", "+trainer.limit_val_batches=1", "test=false",
            *EVERY_STEP_CHECKPOINTS]  # fmt: skip
    train(compose_config("train", args, tmp_path / "whole"))
    step_7 = tmp_path / "whole" / "checkpoints" / "step_7.ckpt"
    assert torch.load(step_7, weights_only=True)["epoch"] == 1  # inside the second epoch
    train(compose_config("train", [*args, f"ckpt_path={step_7}"], tmp_path / "resumed"))
    whole, resumed = (
        torch.load(tmp_path / run / "checkpoints" / "step_10.ckpt", weights_only=True)["state_dict"]
        for run in ("whole", "resumed")
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


@pytest.mark.slow
def test_missing_checkpoint_file_says_so(tmp_path):
    missing = tmp_path / "nope.ckpt"
    result = run_cli("src.train", "data=digits", f"ckpt_path={missing}", f"paths.log_dir={tmp_path}", *QUICK)
    assert result.returncode == 2
    assert f"error: checkpoint not found: {missing}" in result.stderr
    assert "ckpt_path=last" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_testing_a_checkpoint_without_training_points_to_eval(tmp_path):
    result = run_cli("src.train", "data=digits", "train=false", "ckpt_path=last", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: train=false with ckpt_path=last would test" in result.stderr
    assert "python -m src.eval ckpt_path=<file>" in result.stderr and not list(tmp_path.glob("**/*.ckpt"))


@pytest.mark.slow
def test_a_sweep_refuses_to_resume_one_checkpoint_in_every_job(tmp_path):
    result = run_cli(
        "src.train", "-m", "data=digits", "ckpt_path=last", "seed=1,2", f"paths.log_dir={tmp_path}", *QUICK
    )
    assert result.returncode == 2
    assert (
        "error: ckpt_path=last in a sweep (-m) would make every job resume the same checkpoint"
        in result.stderr
    )
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("**/*.ckpt"))


def test_slurm_launcher_and_optuna_search_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=8",
             "hparams_search=vit_optuna", "trainer=multinode"],
            return_hydra_config=True,
        )  # fmt: skip
    launcher, sweeper = cfg.hydra.launcher, cfg.hydra.sweeper
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == 8 and launcher.signal_delay_s > 0  # one task per GPU; SIGUSR1 first
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler.seed is not None and sweeper.storage is None
    assert cfg.optimized_metric == "val/acc"
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 8)


def test_finetune_search_varies_the_frozen_depth(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["hparams_search=finetune_optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["freeze.num_blocks"].startswith("choice(")
    # one trial's values build a DeiT with that many blocks frozen
    trial = compose_config(
        "train", ["hparams_search=finetune_optuna", "model=deit_tiny", "data=digits", "data.image_size=32",
                  "freeze.num_blocks=10", "optimizer.lr=1e-4"], tmp_path
    )  # fmt: skip
    backbone = instantiate(trial.module).backbone
    assert not any(p.requires_grad for p in backbone.blocks[9].parameters())
    assert all(p.requires_grad for p in backbone.blocks[10].parameters())


def test_ranks_of_a_sweep_job_keep_the_config_it_was_chosen_from():
    argv = ["-m", "-cn", "train", "--config-dir=extra", "-cd", "more", "seed=1,2", "--info"]
    assert config_flags(argv) == ["-cn", "train", "--config-dir=extra", "-cd", "more"]
