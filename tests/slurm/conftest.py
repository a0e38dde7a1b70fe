import getpass

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


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(request):
    """A test that failed mid-job leaves its job running on the node's 2 CPUs: cancelled, so that the next test
    does not wait behind it."""
    yield
    if "slurm" in request.fixturenames:
        request.getfixturevalue("slurm").run("scancel", f"--user={getpass.getuser()}")
