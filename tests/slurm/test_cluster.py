"""The README's SLURM paths on a real one-node cluster with accounting (CPU, gloo): sbatch + srun with two ranks,
the submitit launcher (without sacct errors), preemption (SIGUSR1 -> hpc checkpoint -> requeue) with one and two
ranks, and a cancelled job resumed by hand; `sacct` reports the jobs of the first two. `make slurm-test` runs
them; they need root and Debian's SLURM and MariaDB packages (tests/slurm/cluster.py)."""

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, TINY_VIT
from tests.slurm.cluster import Cluster, accounted_job, job_info, wait_for_job

pytestmark = pytest.mark.slow

# the node's 2 CPUs are shared with everything else on the machine: generous limits
JOB_TIMEOUT = 900
CPU = [
    *TINY_VIT,
    "data=digits",
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "~callbacks.rich_progress_bar",
]
# 79 steps of 16 images an epoch (per rank: 40 with two), so that a signal lands mid-epoch on a fast machine too
SLOW_EPOCHS = ["data.batch_size=16", "trainer.log_every_n_steps=2"]


def job_env(cluster: Cluster) -> dict[str, str]:
    return {**cluster.env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def sbatch(cluster: Cluster, tmp_path: Path, overrides: list[str], tasks: int = 1, name: str = "job",
           nodes: int = 1) -> str:  # fmt: skip
    """Submits the README's sbatch script in its CPU form: `tasks` ranks on each of `nodes` nodes; returns the job
    id. srun labels each output line with its rank."""
    script = tmp_path / f"{name}.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --job-name=vitlab\n#SBATCH --nodes={nodes}\n#SBATCH --ntasks-per-node={tasks}\n"
        "#SBATCH --cpus-per-task=1\n#SBATCH --time=30\n#SBATCH --signal=SIGUSR1@90\n#SBATCH --requeue\n"
        f"#SBATCH --open-mode=append\n#SBATCH --output={tmp_path / name}.out\n"
        f"srun --label {sys.executable} -m src.train trainer=multinode trainer.num_nodes={nodes} "
        f"trainer.devices={tasks} "
        + " ".join(f'"{o}"' for o in overrides)  # "": ${SLURM_JOB_ID} expands
        + "\n"
    )
    out = cluster.run("sbatch", "--parsable", f"--chdir={ROOT}", str(script), env=job_env(cluster))
    return out.strip().split(";")[0]


def run_dir_of(tmp_path: Path, job_id: str) -> list[str]:
    return [f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/train/runs/slurm_{job_id}"]


def tensorboard_steps(folder: Path, tag: str) -> list[int]:
    """The steps of a scalar as TensorBoard shows them (events an interrupted run logged past its checkpoint
    are hidden by the resumed run's restart marker)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return [event.step for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def report_callback_state(checkpoint: Path) -> dict:
    states = torch.load(checkpoint, weights_only=True)["callbacks"]
    return next(state for key, state in states.items() if key.startswith("ReportCallback"))


def wait_for(path: Path, job_id: str, cluster: Cluster, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    polls = 0
    while not path.exists():
        if polls % 10 == 0:  # scontrol is slow: the file is looked for every 0.1 s, the job every second
            assert job_info(cluster, job_id)["JobState"] in ("PENDING", "RUNNING"), job_info(cluster, job_id)
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        polls += 1
        time.sleep(0.1)


def signal_mid_epoch(cluster: Cluster, job_id: str, run_dir: Path) -> None:
    """SIGUSR1 (what --signal=SIGUSR1@90 sends before the time limit) about a third into epoch 1, timed by how
    long epoch 0 took (fit start, when hparams.yaml is written, to the end-of-epoch last.ckpt) and counted from
    the end of epoch 0, not from when the test saw it."""
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, job_id, cluster)
    epoch_end = last.stat().st_mtime
    epoch_seconds = epoch_end - (run_dir / "tensorboard" / "hparams.yaml").stat().st_mtime
    time.sleep(max(0.0, epoch_end + epoch_seconds / 3 - time.time()))
    cluster.run("scancel", "--signal=USR1", job_id)


def wait_for_state(cluster: Cluster, job_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (info := job_info(cluster, job_id))["JobState"] != state:
        assert time.monotonic() < deadline, {key: info.get(key) for key in ("JobState", "Reason", "Restarts")}
        time.sleep(0.5)


def assert_full_report(run_dir: Path, epochs: int) -> None:
    """A run that trained `epochs` epochs, once each, and tested every test image once."""
    supports = [line.rsplit(",", 1)[1] for line in (run_dir / "report.csv").read_text().splitlines()]
    assert supports[-3:] == ["360"] * 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_images"] == 360 and summary["test"]["test/acc"] > 0
    for name in ("confusion_matrix.png", "curves.png", "misclassified.png", "report.md"):
        assert (run_dir / name).is_file(), name
    state = report_callback_state(run_dir / "checkpoints" / "last.ckpt")
    assert [row["epoch"] for row in state["history"]] == list(range(epochs))  # the curves
    assert all({"train/loss", "val/acc"} <= row.keys() for row in state["history"])
    assert len(state["epoch_seconds"]) == epochs
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == epochs - 1
    tensorboard = run_dir / "tensorboard"
    assert not [p for p in tensorboard.iterdir() if p.is_dir()]  # one version: the folder itself
    val_steps = tensorboard_steps(tensorboard, "val/acc")
    assert len(val_steps) == epochs and val_steps == sorted(set(val_steps))
    train_steps = tensorboard_steps(tensorboard, "train/loss_step")
    gaps = {b - a for a, b in zip(train_steps, train_steps[1:], strict=False)}
    assert len(gaps) == 1 and gaps.pop() > 0, train_steps  # every log_every_n_steps, once, none skipped
    assert len(tensorboard_steps(tensorboard, "test/acc")) == 1


def test_sbatch_with_two_ranks_makes_one_run(slurm, tmp_path):
    job = sbatch(slurm, tmp_path, [*CPU, "trainer.max_epochs=2", *run_dir_of(tmp_path, "${SLURM_JOB_ID}")], 2)
    info = wait_for_job(slurm, job, JOB_TIMEOUT)
    output = (tmp_path / "job.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert accounted_job(slurm, job) == {"JobID": job, "State": "COMPLETED", "ExitCode": "0:0"}
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [f"slurm_{job}"]
    run_dir = tmp_path / "train" / "runs" / f"slurm_{job}"
    assert "MEMBER: 2/2" in output and output.count("Classification report (test)") == 1
    assert_full_report(run_dir, epochs=2)
    hparams = yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())
    batch_size = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]["batch_size"]
    assert hparams["data/effective_batch_size"] == 2 * batch_size


def test_submitit_launcher_sweep(slurm, tmp_path):
    command = [
        sys.executable, "-m", "src.train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=30", *CPU, "trainer.max_epochs=2", "+trainer.limit_train_batches=6", "trainer.log_every_n_steps=2",
        "model.depth=1,2", f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=job_env(slurm), capture_output=True, text=True,
                            timeout=JOB_TIMEOUT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    # submitit polls sacct for its jobs' states; with accounting it no longer warns on every poll that sacct failed
    logs = [result.stdout, result.stderr]
    logs += [path.read_text() for path in sweep.rglob("*") if path.suffix in (".log", ".out", ".err")]
    bypassed = [line for log in logs for line in log.splitlines() if "Bypassing sacct error" in line]
    assert not bypassed, bypassed[:3]
    for job in ("0", "1"):
        assert_full_report(sweep / job, epochs=2)
        # what the job returned to the sweep: its best epoch's val/acc (optimized_metric)
        (result_file,) = (sweep / ".submitit").glob(f"*_{job}/*_result.pkl")
        array_task = result_file.parent.name  # <array job>_<task>
        accounted = accounted_job(slurm, array_task)
        assert accounted == {"JobID": array_task, "State": "COMPLETED", "ExitCode": "0:0"}
        outcome, job_return = pickle.loads(result_file.read_bytes())
        assert outcome == "success"
        best = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
        (score,) = (
            s["best_model_score"]
            for k, s in best.items()
            if k.startswith("ModelCheckpoint{'monitor': 'val/acc'")
        )
        assert job_return.return_value == pytest.approx(float(score))


@pytest.mark.parametrize("tasks", [1, 2])
def test_preempted_job_is_requeued_and_finishes(slurm, tmp_path, tasks):
    epochs = 3
    job = sbatch(slurm, tmp_path, [*CPU, *SLOW_EPOCHS, f"trainer.max_epochs={epochs}",
                                   *run_dir_of(tmp_path, "${SLURM_JOB_ID}")], tasks)  # fmt: skip
    run_dir = tmp_path / "train" / "runs" / f"slurm_{job}"
    signal_mid_epoch(slurm, job, run_dir)
    # SLURM holds a requeued batch job back for 2 minutes (EligibleTime); the test lets it start at once
    wait_for_state(slurm, job, "PENDING")
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = wait_for_job(slurm, job, JOB_TIMEOUT)
    output = (tmp_path / "job.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), output[-3000:]
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [f"slurm_{job}"]  # the same run dir
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)
    steps_per_epoch = -(-1257 // (16 * tasks))  # the training split, per rank
    assert 1 <= hpc["epoch"] < epochs - 1 and hpc["global_step"] % steps_per_epoch, "not saved mid-epoch"
    log = (run_dir / "train.log").read_text()
    # the requeue's SIGTERM saves last.ckpt at the end of the batch under way, at or after the hpc checkpoint's
    # step: the requeued job resumes the one with more steps (the hpc one on a tie)
    resumed = [run_dir / "hpc_ckpt_1.ckpt", run_dir / "checkpoints" / "last.ckpt"]
    assert "Handling auto-requeue signal" in log
    assert any(f"Restoring states from the checkpoint path at {path}" in log for path in resumed), log[-3000:]
    assert_full_report(run_dir, epochs)
    assert output.count("Classification report (test)") == 1


def test_cancelled_job_resumed_by_hand(slurm, tmp_path):
    epochs = 3
    first = sbatch(slurm, tmp_path, [*CPU, f"trainer.max_epochs={epochs}",
                                     *run_dir_of(tmp_path, "${SLURM_JOB_ID}")], name="first")  # fmt: skip
    run_dir = tmp_path / "train" / "runs" / f"slurm_{first}"
    wait_for(run_dir / "checkpoints" / "last.ckpt", first, slurm)
    slurm.run("scancel", first)
    assert wait_for_job(slurm, first, JOB_TIMEOUT)["JobState"] == "CANCELLED"
    assert not (run_dir / "summary.json").exists()
    # by hand: the same command with ckpt_path=last, which continues in the cancelled run's dir
    resumed = sbatch(slurm, tmp_path, [*CPU, f"trainer.max_epochs={epochs}", "ckpt_path=last",
                                       f"paths.log_dir={tmp_path}"], name="resumed")  # fmt: skip
    info = wait_for_job(slurm, resumed, JOB_TIMEOUT)
    output = (tmp_path / "resumed.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [f"slurm_{first}"]
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in (run_dir / "train.log").read_text()
    assert_full_report(run_dir, epochs)
