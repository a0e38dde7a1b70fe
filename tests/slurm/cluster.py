"""A one-node SLURM cluster on this machine for the tests: munged (as the munge user), slurmctld and slurmd (as
root), with their config, key, sockets, state and logs in one temporary folder. Needs root and Debian's
slurmctld, slurmd, slurm-client and munge packages (`.ci/run` installs them on CI)."""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm.conf.template")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "scontrol", "scancel", "squeue")


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a SLURM cluster needs root (slurmd runs jobs as their user; munged as the munge user)"
    absent = [name for name in PROGRAMS if not shutil.which(name)]
    try:
        pwd.getpwnam("munge")
    except KeyError:
        absent.append("the munge user")
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurmctld slurmd slurm-client munge)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # what a client (sbatch, sinfo, ...) needs: SLURM_CONF
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *command: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
        """A SLURM client command's output (raises on failure)."""
        return subprocess.run(
            command, env=env or self.env, capture_output=True, text=True, timeout=timeout, check=True
        ).stdout

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        # newest first (slurmd, slurmctld, munged), each by its pid
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start(timeout: float = 60) -> Cluster:
    """Starts the cluster and waits until `sinfo` shows its node idle."""
    # not under pytest's tmp folders: those are root-only (0700) and munged runs as the munge user
    root = Path(tempfile.mkdtemp(prefix="vitlab-slurm-"))
    root.chmod(0o755)
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o700)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    shutil.chown(munge_dir, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    for name in ("slurmctld", "slurmd"):
        (root / name).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(
        TEMPLATE.read_text().format(
            host=host,
            cpus=os.cpu_count(),
            state_dir=root,
            munge_socket=munge_dir / "munge.socket",
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, env)
    try:
        cluster.processes.append(
            subprocess.Popen(
                ["munged", "--foreground", "--force", f"--key-file={key}",
                 f"--socket={munge_dir / 'munge.socket'}", f"--pid-file={munge_dir / 'munged.pid'}",
                 f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}"],
                user="munge", group="munge", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        _wait_for(lambda: (munge_dir / "munge.socket").exists(), timeout, "munged's socket", cluster)
        for daemon in ("slurmctld", "slurmd"):
            cluster.processes.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(conf)],
                    env=env,
                    stdout=open(root / f"{daemon}.out", "w"),  # noqa: SIM115 (the daemon owns it)
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_for(lambda: _node_state(cluster) == "idle", timeout, "an idle node in sinfo", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_state(cluster: Cluster) -> str:
    try:
        return cluster.run("sinfo", "--noheader", "--format=%t", timeout=10).strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return ""


def _wait_for(ready, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for process in cluster.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited ({process.returncode})\n{cluster.logs()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s\n{cluster.logs()}")
        time.sleep(0.5)


def job_info(cluster: Cluster, job_id: str) -> dict[str, str]:
    """scontrol's fields of a job (JobState, ExitCode, Restarts, ...); finished jobs stay MinJobAge (300 s)."""
    out = cluster.run("scontrol", "show", "job", "--oneliner", job_id)
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for_job(cluster: Cluster, job_id: str, timeout: float) -> dict[str, str]:
    """Waits until the job has ended (requeues included) and returns its scontrol fields."""
    deadline = time.monotonic() + timeout
    while (info := job_info(cluster, job_id))["JobState"] in ("PENDING", "RUNNING", "CONFIGURING",
                                                             "COMPLETING", "REQUEUED", "REQUEUE_HOLD"):  # fmt: skip
        if time.monotonic() > deadline:
            cluster.run("scancel", job_id)
            raise TimeoutError(
                f"job {job_id} still {info['JobState']} after {timeout:.0f} s\n{cluster.logs()}"
            )
        time.sleep(2)
    return info
