"""A SLURM preemption without SLURM: srun's environment simulated, SIGUSR1 sent mid-epoch, then the requeued job
run again. Issue 22's requeued job crashed in its report (DDP with one process gathered the targets into a 2-D
array), left an empty <task>.log, and its TensorBoard steps repeated and skipped. The real cluster runs are in
tests/slurm."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import QUICK, ROOT, TINY_VIT, run_cli

# what srun gives a job's only task; Lightning's SLURMEnvironment reads these. No cluster: the `scontrol requeue`
# of Lightning's SIGUSR1 handler fails (and could never requeue a real job 4242)
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
def test_job_signalled_mid_epoch_resumes_from_hpc_checkpoint_and_reports(tmp_path):
    run_dir = tmp_path / "slurm_4242"
    args = [
        "data=digits", "trainer=multinode", "trainer.num_nodes=1", "trainer.devices=1", *TINY_VIT, *QUICK,
        "trainer.max_epochs=2", "data.batch_size=32", "trainer.log_every_n_steps=2", "+trainer.limit_val_batches=2",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **ONE_TASK}
    first = subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # epoch 0 ends with last.ckpt; SIGUSR1 a third into epoch 1, timed by how long epoch 0 took
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists():
        assert first.poll() is None, "the run ended before its first epoch did"
        time.sleep(0.2)
    time.sleep((last.stat().st_mtime - (run_dir / "tensorboard" / "hparams.yaml").stat().st_mtime) / 3)
    first.send_signal(signal.SIGUSR1)
    assert first.wait(timeout=600) == 0  # no requeue without a cluster: it trains on to the end
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
