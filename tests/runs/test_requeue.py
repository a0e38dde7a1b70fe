"""A SLURM preemption without SLURM: srun's environment simulated, SIGUSR1 sent mid-epoch, then the requeued job
run again. Issue 22's requeued job crashed in its report (DDP with one process gathered the targets into a 2-D
array), left an empty <task>.log, and its TensorBoard steps repeated and skipped. The real cluster runs are in
tests/slurm."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.upstream_fixes.lightning import RequeueAtBatchEnd
from tests.conftest import QUICK, ROOT, TINY_VIT, run_cli

# what srun gives a job's only task; Lightning's SLURMEnvironment reads these. No cluster: the tests put an `scontrol`
# that only notes its arguments first on PATH (and SLURM_CONF keeps any real one away from a real cluster)
ONE_TASK = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "vitlab",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
    "SLURM_CONF": "/nonexistent/slurm.conf",
}


@pytest.mark.slow
def test_job_signalled_mid_epoch_resumes_from_hpc_checkpoint_and_reports(tmp_path, scontrol_calls):
    run_dir = tmp_path / "slurm_4242"
    args = [
        "data=digits", "trainer=multinode", "trainer.num_nodes=1", "trainer.devices=1", *TINY_VIT, *QUICK,
        "trainer.max_epochs=2", "data.batch_size=32", "trainer.log_every_n_steps=2", "+trainer.limit_val_batches=2",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **ONE_TASK}
    first = subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # epoch 0 ends with last.ckpt; SIGUSR1 right then lands in epoch 1, whose 40 batches take under a second on a
    # fast host (waiting a third of epoch 0's time, start-up included, once missed epoch 1 altogether in CI)
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists():
        assert first.poll() is None, "the run ended before its first epoch did"
        time.sleep(0.01)
    first.send_signal(signal.SIGUSR1)
    assert first.wait(timeout=600) == 0  # no cluster to stop it: it trains on to the end
    assert scontrol_calls.read_text() == "requeue 4242\n"
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["epoch"] == 1 and 40 < hpc["global_step"] < 80, "not saved mid-epoch 1 (40 steps an epoch)"

    requeued = run_cli("src.train", *args, env=ONE_TASK)  # what the requeued job runs
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "Handling auto-requeue signal" in log  # the first job's Lightning messages are in the log too
    assert f"Restoring states from the checkpoint path at {run_dir / 'hpc_ckpt_1.ckpt'}" in log
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/1" in log  # DDP with one process
    supports = [line.rsplit(",", 1)[1] for line in (run_dir / "report.csv").read_text().splitlines()]
    assert supports[-3:] == ["360"] * 3  # each test image once, not a 2-D array
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss_step")]
    assert steps == list(range(1, 80, 2))  # every second step of 80, once: none repeated, none skipped
    assert [event.step for event in events.Scalars("val/acc")] == [39, 79]


class SignalAtBatchStart(L.Callback):
    """SLURM's requeue signal, as it can arrive: while a training batch is under way."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def scontrol_calls(tmp_path, monkeypatch) -> Path:
    """An `scontrol` first on PATH that notes its arguments (the real one, without a cluster, retries for 60 s)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_requeue_signal_saves_at_the_end_of_the_batch_not_inside_the_handler(
    tmp_path, monkeypatch, scontrol_calls
):
    # Lightning's own handler saves at once, mid-batch (between any two bytecodes: inside a collective under DDP,
    # where the ranks then hang); vitlab's saves when batch 5 has ended, every rank at the same step
    for name, value in ONE_TASK.items():
        monkeypatch.setenv(name, value)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=8, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SignalAtBatchStart(5), RequeueAtBatchEnd()],
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 6
    assert scontrol_calls.read_text() == "requeue 4242\n"
    assert trainer.global_step == 8  # no cluster to stop the job: the fit went on
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the process's handler is back after the fit
