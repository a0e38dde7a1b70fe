import pytest

from tests.slurm import cluster


@pytest.fixture(scope="session")
def slurm():
    """A one-node SLURM cluster with accounting for the session (tests/slurm/cluster.py); skipped where it cannot
    run."""
    reason = cluster.missing()
    if reason:
        pytest.skip(f"no SLURM cluster with accounting (slurmdbd, MariaDB): {reason}")
    running = cluster.start()
    yield running
    running.stop()
