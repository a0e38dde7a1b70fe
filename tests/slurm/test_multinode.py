"""DDP across two nodes on this machine (tests/slurm/cluster.py: each node a network namespace with its own address,
hostname and slurmd), CPU and gloo: sbatch + srun with two ranks on each node, and torchrun started on each node
without SLURM. Both give the metrics of four ranks on one machine with the same seed and global batch."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT
from tests.slurm.cluster import Cluster, accounted_job, wait_for_job
from tests.slurm.test_cluster import (
    CPU,
    JOB_TIMEOUT,
    assert_full_report,
    job_env,
    run_dir_of,
    sbatch,
    wait_for,
    wait_for_state,
)

pytestmark = pytest.mark.slow

# 4 ranks of 16 images a step: the global batch of 64 in every layout
FEW_STEPS = [*CPU, "data.batch_size=16", "trainer.max_epochs=2", "+trainer.limit_train_batches=5",
             "trainer.log_every_n_steps=1", "seed=7"]  # fmt: skip


def metrics(run_dir: Path) -> dict[str, float]:
    """The test metrics of summary.json and every epoch's val/loss and val/acc as TensorBoard holds them."""
    values = dict(json.loads((run_dir / "summary.json").read_text())["test"])
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for tag in ("val/loss", "val/acc"):
        values |= {f"{tag}@{event.step}": event.value for event in events.Scalars(tag)}
    return values


def assert_same_metrics(run_dir: Path, reference: dict[str, float]) -> None:
    # gloo sums the gradients of 4 ranks in another order across machines: equal up to float rounding
    assert metrics(run_dir) == pytest.approx(reference, rel=1e-4, abs=1e-5)


def assert_four_ranks(output: str) -> None:
    for rank in range(4):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/4" in output, output[-3000:]


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory) -> dict[str, float]:
    """The metrics of 4 ranks that Lightning starts on this machine itself (no cluster)."""
    log_dir = tmp_path_factory.mktemp("one_machine")
    command = [sys.executable, "-m", "src.train", "trainer=ddp", "trainer.devices=4", *FEW_STEPS,
               f"paths.log_dir={log_dir}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=job_env_without_slurm(), capture_output=True, text=True,
                            timeout=JOB_TIMEOUT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    return metrics(run_dir)


def job_env_without_slurm() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def test_sbatch_over_two_nodes_trains_like_one_machine(two_nodes, tmp_path, one_machine):
    job = sbatch(
        two_nodes, tmp_path, [*FEW_STEPS, *run_dir_of(tmp_path, "${SLURM_JOB_ID}")], tasks=2, nodes=2
    )
    info = wait_for_job(two_nodes, job, JOB_TIMEOUT)
    output = (tmp_path / "job.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["NodeList"]) == ("COMPLETED", "0:0", "node[1-2]"), (
        output[-3000:]
    )
    assert accounted_job(two_nodes, job) == {"JobID": job, "State": "COMPLETED", "ExitCode": "0:0"}
    assert_four_ranks(output)
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [f"slurm_{job}"]
    run_dir = tmp_path / "train" / "runs" / f"slurm_{job}"
    assert output.count("Classification report (test)") == 1
    assert_full_report(run_dir, epochs=2)
    assert_same_metrics(run_dir, one_machine)


def test_torchrun_on_each_node_trains_like_one_machine(two_nodes, tmp_path, one_machine):
    """The non-SLURM path: torchrun started on each node, meeting through c10d's rendezvous on node1 (its own
    network namespace: the port is free there)."""
    nodes, run_dir = two_nodes.nodes, tmp_path / "train" / "runs" / "torchrun"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={nodes.names[0]}:29400", "--rdzv-id=vitlab",
                "-m", "src.train", "trainer=multinode", "trainer.num_nodes=2", "trainer.devices=2", *FEW_STEPS,
                f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    logs = [tmp_path / f"{name}.out" for name in nodes.names]
    started = [
        subprocess.Popen(
            nodes.command(node, *torchrun),
            cwd=ROOT,
            env=job_env_without_slurm(),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for node, log in enumerate(logs)
    ]
    try:
        codes = [process.wait(timeout=JOB_TIMEOUT) for process in started]
    finally:
        for process in started:
            process.kill()
    output = "".join(log.read_text() for log in logs)
    assert codes == [0, 0], output[-3000:]
    assert_four_ranks(output)
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == ["torchrun"]
    assert output.count("Classification report (test)") == 1
    assert_full_report(run_dir, epochs=2)
    assert_same_metrics(run_dir, one_machine)


def lose_node(cluster: Cluster, node: int) -> None:
    """The node dies as SLURM sees it: set down (what slurmctld concludes by itself after SlurmdTimeout, 300 s by
    default), which ends the node's jobs and requeues them; then everything left in it (slurmd, job steps,
    ranks) is killed at once. Killed first, the other nodes' ranks could fail on the broken connection before
    SLURM notices, and the job would end FAILED instead (docs/scaling.md)."""
    cluster.run("scontrol", "update", f"NodeName={cluster.nodes.names[node]}", "State=DOWN", "Reason=lost")
    for pid in cluster.nodes.pids(node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def resume_node(cluster: Cluster, node: int, timeout: float = 60) -> None:
    """`scontrol update State=RESUME` for a node whose slurmd was started again. The node may be back already (its
    slurmd registered first: slurmctld then refuses RESUME as "Invalid node state specified"), or slurmctld may
    refuse while the slurmd is still registering; fails with slurmctld's reason if the node stays down."""
    name, deadline = cluster.nodes.names[node], time.monotonic() + timeout
    while True:
        resume = ("scontrol", "update", f"NodeName={name}", "State=RESUME")
        result = subprocess.run(resume, env=cluster.env, capture_output=True, text=True, timeout=60)
        states = cluster.node_states()
        if result.returncode == 0 or (len(states) > node and not states[node].startswith(("down", "drain"))):
            return
        assert time.monotonic() < deadline, f"{name} stays {states}: {result.stderr}"
        time.sleep(1)


def test_a_job_that_lost_a_node_is_requeued_and_resumes_when_the_node_is_back(two_nodes, tmp_path):
    """sbatch --requeue --nodes=2: the job waits for two nodes again and resumes from the last epoch's end (the
    dead node sent no signal, so no hpc checkpoint was saved); it ends with all its epochs and one report."""
    epochs = 3
    job = sbatch(two_nodes, tmp_path, [*CPU, "data.batch_size=16", "trainer.log_every_n_steps=2",
                                       f"trainer.max_epochs={epochs}", *run_dir_of(tmp_path, "${SLURM_JOB_ID}")],
                 tasks=2, nodes=2)  # fmt: skip
    run_dir = tmp_path / "train" / "runs" / f"slurm_{job}"
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, job, two_nodes)
    lose_node(two_nodes, 1)
    wait_for_state(two_nodes, job, "PENDING")
    assert "node1" not in two_nodes.run("squeue", "--noheader", "--format=%N", f"--job={job}")
    two_nodes.start_slurmd(1)
    resume_node(two_nodes, 1)
    # SLURM holds a requeued batch job back for 2 minutes (EligibleTime); the test lets it start at once
    two_nodes.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = wait_for_job(two_nodes, job, JOB_TIMEOUT)
    output = (tmp_path / "job.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), output[-3000:]
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [f"slurm_{job}"]
    assert f"Resuming from {last}" in (run_dir / "train.log").read_text()
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    # checkpoints are written whole or not at all (src/upstream_fixes/checkpoint_io.py), a node's death included
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
        torch.load(checkpoint, weights_only=True)
    assert_full_report(run_dir, epochs)
    assert output.count("Classification report (test)") == 1


def test_a_sweep_lands_on_both_nodes_and_a_job_of_a_lost_node_is_requeued(two_nodes, tmp_path):
    """`-m hydra/launcher=slurm` with 4 one-rank jobs on 2 nodes of 2 CPUs: two run on each node. node2 dies once
    its jobs have ended an epoch; SLURM requeues them (batch jobs are requeued after a node failure unless
    --no-requeue), they resume from their last.ckpt on the node that is left, and the sweep ends with 4 runs."""
    epochs = 3
    command = [
        sys.executable, "-m", "src.train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=30", *CPU, "data.batch_size=16", "+trainer.limit_train_batches=20",
        "trainer.log_every_n_steps=2", f"trainer.max_epochs={epochs}", "model.depth=1,2", "seed=1,2",
        f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    log = tmp_path / "sweep.out"
    sweep_process = subprocess.Popen(command, cwd=ROOT, env=job_env(two_nodes), stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
    try:
        placed = wait_for_placement(two_nodes, jobs=4)
        assert sorted(placed.values()) == ["node1", "node1", "node2", "node2"], placed
        on_node2 = [job for job, node in placed.items() if node == "node2"]
        sweep_dir = wait_for_sweep_dir(tmp_path)
        for job in on_node2:
            wait_for(sweep_dir / job.split("_")[1] / "checkpoints" / "last.ckpt", job, two_nodes)
        lose_node(two_nodes, 1)
        for job in on_node2:
            wait_for_state(two_nodes, job, "PENDING")
            two_nodes.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        assert sweep_process.wait(timeout=JOB_TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        sweep_process.kill()
        two_nodes.start_slurmd(1)
        resume_node(two_nodes, 1)
    for job in placed:
        info = wait_for_job(two_nodes, job, timeout=120)  # submitit returns once the result is written
        restarts = "1" if job in on_node2 else "0"
        assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", restarts), info
        run_dir = sweep_dir / job.split("_")[1]
        assert_full_report(run_dir, epochs)
        if job in on_node2:
            assert (
                f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}"
                in (run_dir / "train.log").read_text()
            )
    compared = subprocess.run([sys.executable, "-m", "src.compare", str(sweep_dir)], cwd=ROOT,
                              env=job_env_without_slurm(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    rows = (sweep_dir / "comparison.csv").read_text().splitlines()[1:]
    assert len(rows) == 4, rows


def wait_for_placement(cluster: Cluster, jobs: int, timeout: float = 300) -> dict[str, str]:
    """The node each of the sweep's array jobs runs on (`<array>_<task>` -> node), once all `jobs` run."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i %N")
        placed = dict(line.split() for line in out.splitlines() if line.strip())
        if len(placed) == jobs:
            return placed
        assert time.monotonic() < deadline, f"not all {jobs} jobs running after {timeout} s: {placed}"
        time.sleep(1)


def wait_for_sweep_dir(log_dir: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while not (found := list((log_dir / "train" / "multiruns").glob("*"))):
        assert time.monotonic() < deadline, "no sweep folder"
        time.sleep(0.5)
    return found[0]
