"""DDP across two nodes on this machine (tests/slurm/cluster.py: each node a network namespace with its own address,
hostname and slurmd), CPU and gloo: sbatch + srun with two ranks on each node, and torchrun started on each node
without SLURM. Both give the metrics of four ranks on one machine with the same seed and global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT
from tests.slurm.cluster import accounted_job, wait_for_job
from tests.slurm.test_cluster import CPU, JOB_TIMEOUT, assert_full_report, run_dir_of, sbatch

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
