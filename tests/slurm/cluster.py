"""A one-node SLURM cluster on this machine for the tests, accounting included: munged (as the munge user), a
MariaDB server (mariadbd) with its own data folder, slurmdbd on top of it, slurmctld and slurmd (as root), with
their config, key, sockets, database, state and logs in one temporary folder; each stopped by its pid. Needs root
and Debian's packages in APT_PACKAGES (`.ci/run` installs them on CI)."""

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm.conf.template")
DBD_TEMPLATE = Path(__file__).with_name("slurmdbd.conf.template")
APT_PACKAGES = "slurmctld slurmd slurmdbd slurm-client munge mariadb-server-core mariadb-client-core"
PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmdbd", "sinfo", "sbatch", "scontrol", "scancel", "squeue", "sacct",
            "sacctmgr", "mariadbd", "mariadb-install-db", "my_print_defaults")  # fmt: skip
# a job in one of these has not ended yet (requeues included)
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD")


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
        return f"{', '.join(absent)} not installed (apt-get install {APT_PACKAGES})"
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
        self._end_jobs()
        # newest first (slurmd, slurmctld, slurmdbd, mariadbd, munged), each by its pid
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _end_jobs(self, timeout: float = 60) -> None:
        """Cancels the jobs still queued, running or completing and waits until they are gone: a job's slurmstepd
        outlives slurmd and, once slurmctld is gone too, hangs on with its processes (a test that failed midway,
        a sweep job still exiting)."""
        if not any(process.args[0] == "slurmctld" and process.poll() is None for process in self.processes):
            return
        deadline = time.monotonic() + timeout
        try:
            while jobs := self.run("squeue", "--noheader", "--format=%A", timeout=10).split():
                if time.monotonic() > deadline:
                    return
                # not checked: scancel fails on a job that is already completing, which is only waited for
                subprocess.run(["scancel", *jobs], env=self.env, capture_output=True, timeout=10)
                time.sleep(1)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return


def start(timeout: float = 60) -> Cluster:
    """Starts the cluster and waits until `sinfo` shows its node idle and slurmdbd has it registered."""
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
    db_port, dbd_port, db_user, db_password = _free_port(), _free_port(), "slurm", secrets.token_hex(16)
    conf = root / "slurm.conf"
    conf.write_text(
        TEMPLATE.read_text().format(
            host=host,
            cpus=os.cpu_count(),
            state_dir=root,
            munge_socket=munge_dir / "munge.socket",
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            dbd_port=dbd_port,
        )
    )
    # slurmdbd reads the slurmdbd.conf next to $SLURM_CONF; only SlurmUser (root) may read it
    dbd_conf = root / "slurmdbd.conf"
    dbd_conf.touch(mode=0o600)
    dbd_conf.write_text(
        DBD_TEMPLATE.read_text().format(
            state_dir=root,
            munge_socket=munge_dir / "munge.socket",
            dbd_port=dbd_port,
            db_port=db_port,
            db_user=db_user,
            db_password=db_password,
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, env)
    try:
        _install_database(root / "mariadb", db_user, db_password)
        cluster.processes.append(
            subprocess.Popen(
                ["munged", "--foreground", "--force", f"--key-file={key}",
                 f"--socket={munge_dir / 'munge.socket'}", f"--pid-file={munge_dir / 'munged.pid'}",
                 f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}"],
                user="munge", group="munge", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        _wait_for(lambda: (munge_dir / "munge.socket").exists(), timeout, "munged's socket", cluster)
        # --no-defaults: none of the system's /etc/mysql settings (its datadir, socket, port); the socket file
        # appears once the server accepts connections
        cluster.processes.append(
            _daemon(root, "mariadbd", "--no-defaults", f"--datadir={root / 'mariadb'}", "--user=root",
                    f"--socket={root / 'mariadbd.sock'}", f"--pid-file={root / 'mariadbd.pid'}",
                    f"--log-error={root / 'mariadbd.log'}", "--bind-address=127.0.0.1", f"--port={db_port}",
                    "--skip-name-resolve")
        )  # fmt: skip
        _wait_for(lambda: (root / "mariadbd.sock").exists(), timeout, "mariadbd's socket", cluster)
        cluster.processes.append(_daemon(root, "slurmdbd", "-D", env=env))
        _wait_for(lambda: _accounting_clusters(cluster) is not None, timeout, "slurmdbd answering", cluster)
        for daemon in ("slurmctld", "slurmd"):
            cluster.processes.append(_daemon(root, daemon, "-D", "-f", str(conf), env=env))
        # slurmctld registers its cluster with slurmdbd itself (no `sacctmgr add cluster` needed)
        _wait_for(
            lambda: _node_state(cluster) == "idle" and bool(_accounting_clusters(cluster)),
            timeout,
            "an idle node in sinfo and the cluster in sacctmgr",
            cluster,
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _install_database(datadir: Path, user: str, password: str) -> None:
    """A fresh MariaDB data folder whose one account besides root's is slurmdbd's, for its database only."""
    grants = datadir.with_name("grants.sql")
    grants.touch(mode=0o600)
    # the bootstrap server runs without privilege tables: loading them first lets CREATE USER work
    grants.write_text(
        "FLUSH PRIVILEGES;\n"
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
        f"GRANT ALL ON slurm_acct_db.* TO '{user}'@'127.0.0.1';\n"
    )
    install = subprocess.Popen(
        ["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root", "--skip-test-db",
         "--auth-root-authentication-method=socket", f"--extra-file={grants}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = install.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(install.pid, signal.SIGKILL)  # the script and the bootstrap server it started
        install.communicate()
        raise
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({install.returncode})\n{output}")


def _daemon(root: Path, *command: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        stdout=open(root / f"{command[0]}.out", "w"),  # noqa: SIM115 (the daemon owns it)
        stderr=subprocess.STDOUT,
    )


def _accounting_clusters(cluster: Cluster) -> list[str] | None:
    """The clusters slurmdbd knows, or None while it does not answer."""
    try:
        return cluster.run("sacctmgr", "--noheader", "--parsable2", "list", "cluster", "format=cluster",
                           timeout=10).split()  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


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
    while (info := job_info(cluster, job_id))["JobState"] in ACTIVE_STATES:
        if time.monotonic() > deadline:
            cluster.run("scancel", job_id)
            raise TimeoutError(
                f"job {job_id} still {info['JobState']} after {timeout:.0f} s\n{cluster.logs()}"
            )
        time.sleep(2)
    return info


def accounted_job(cluster: Cluster, job_id: str, timeout: float = 120) -> dict[str, str]:
    """What `sacct -j <job>` reports for the job itself (JobID, State, ExitCode) once it has ended there: slurmctld
    sends slurmdbd a job's end a moment after the job's last process exits."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.run("sacct", "-j", job_id, "--allocations", "--noheader", "--parsable2",
                          "--format=JobID,State,ExitCode", timeout=30)  # fmt: skip
        rows = [
            dict(zip(("JobID", "State", "ExitCode"), line.split("|"), strict=True))
            for line in out.splitlines()
        ]
        if rows and rows[0]["State"] not in ACTIVE_STATES:
            return rows[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"sacct -j {job_id}: {out!r} after {timeout:.0f} s\n{cluster.logs()}")
        time.sleep(2)
