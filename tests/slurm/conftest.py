import getpass

import pytest

from tests.slurm import cluster

CLUSTERS = ("slurm", "two_nodes")


def _cluster(nodes: int):
    reason = cluster.missing(nodes)
    if reason:
        pytest.skip(f"no {nodes}-node SLURM cluster with accounting (slurmdbd, MariaDB): {reason}")
    running = cluster.start(nodes)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def slurm():
    """A one-node SLURM cluster with accounting for the session (tests/slurm/cluster.py); skipped where it cannot
    run."""
    yield from _cluster(1)


@pytest.fixture(scope="session")
def two_nodes():
    """A two-node SLURM cluster, each node a network namespace with its own slurmd (tests/slurm/cluster.py);
    skipped where namespaces cannot be made."""
    yield from _cluster(2)


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(request):
    """A test that failed mid-job leaves its job running on the nodes' CPUs: cancelled, so that the next test
    does not wait behind it."""
    yield
    for name in CLUSTERS:
        if name in request.fixturenames:
            request.getfixturevalue(name).run("scancel", f"--user={getpass.getuser()}")
