"""A SLURM cluster on this machine for the tests, accounting included: munged (as the munge user), a MariaDB server
(mariadbd) with its own data folder, slurmdbd on top of it, slurmctld and slurmd (as root), with their config, key,
sockets, database, state and logs in one temporary folder; each stopped by its pid. Needs root and Debian's packages
in APT_PACKAGES (`.ci/run` installs them on CI).

`start()` makes one node: this machine, at 127.0.0.1. `start(nodes=2)` makes each node a network namespace on a
private bridge (`Nodes`), with its own address, the nodes' /etc/hosts and its hostname (a UTS namespace), and one slurmd in it; slurmctld, slurmdbd, MariaDB and munged stay outside, and all
share this machine's files (munge's socket, the job's folders). Traffic stays on that bridge and on loopback."""

import contextlib
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
NODE_PACKAGES = (
    "iproute2 util-linux mount hostname"  # ip netns, nsenter, unshare, mount, hostname: several nodes
)
PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmdbd", "sinfo", "sbatch", "scontrol", "scancel", "squeue", "sacct",
            "sacctmgr", "mariadbd", "mariadb-install-db", "my_print_defaults")  # fmt: skip
# a job in one of these has not ended yet (requeues included)
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD")


def missing(nodes: int = 1) -> str | None:
    """Why a cluster of `nodes` nodes cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a SLURM cluster needs root (slurmd runs jobs as their user; munged as the munge user)"
    absent = [name for name in PROGRAMS if not shutil.which(name)]
    try:
        pwd.getpwnam("munge")
    except KeyError:
        absent.append("the munge user")
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install {APT_PACKAGES})"
    if nodes > 1:
        absent = [
            name for name in ("ip", "nsenter", "unshare", "mount", "hostname") if not shutil.which(name)
        ]
        if absent:
            return f"{', '.join(absent)} not installed (apt-get install {NODE_PACKAGES})"
        probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True,
                               timeout=30)  # fmt: skip
        if probe.returncode != 0:
            return f"no network, UTS and mount namespaces here (unshare --net --uts --mount: {probe.stderr.strip()})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Nodes:
    """Nodes node1, node2, ... as network namespaces on a bridge of this machine: node<i+1> at <prefix>.<11+i>, this
    machine (slurmctld) at <prefix>.1. Names of the bridge, namespaces and veths start with `tag`."""

    tag: str
    prefix: str  # the /24's first three numbers
    names: list[str]
    hosts: Path  # the nodes' /etc/hosts

    @property
    def host_addr(self) -> str:
        return f"{self.prefix}.1"

    def addr(self, node: int) -> str:
        return f"{self.prefix}.{11 + node}"

    def namespace(self, node: int) -> str:
        return f"{self.tag}-{self.names[node]}"

    def command(self, node: int, *argv: str) -> list[str]:
        """`argv` run on a node: in its network namespace, with the nodes' /etc/hosts (in a mount namespace of its
        own) and its hostname (a UTS namespace: what slurmd finds its NodeName by, and gloo its own address by).
        Each part execs the next: the process's pid is argv's. (Not `ip netns exec`: it mounts a fresh /sys, without
        the cgroup folders slurmd needs.)"""
        return ["nsenter", f"--net=/run/netns/{self.namespace(node)}", "unshare", "--uts", "--mount",
                "sh", "-c", 'mount --bind "$1" /etc/hosts && hostname "$0" && shift && exec "$@"',
                self.names[node], str(self.hosts), *argv]  # fmt: skip

    def pids(self, node: int) -> list[int]:
        """The processes in a node's network namespace (its slurmd, its job steps and their ranks)."""
        out = subprocess.run(["ip", "netns", "pids", self.namespace(node)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def create(self, host: str) -> None:
        bridge = f"{self.tag}br"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_addr}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        self.hosts.write_text(
            f"127.0.0.1 localhost\n{self.host_addr} {host}\n"
            + "".join(f"{self.addr(node)} {name}\n" for node, name in enumerate(self.names))
        )
        for node in range(len(self.names)):
            namespace, outside, inside = self.namespace(node), f"{self.tag}h{node}", f"{self.tag}n{node}"
            _ip("netns", "add", namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
            _ip("link", "set", outside, "master", bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{self.addr(node)}/24", "dev", inside)
            _ip("-n", namespace, "link", "set", inside, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Kills what is left in the namespaces (job steps outlive slurmd), each by its pid, and removes them and the
        bridge (each veth goes with its namespace)."""
        for node in range(len(self.names)):
            for pid in self.pids(node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "delete", self.namespace(node)], capture_output=True)
        subprocess.run(["ip", "link", "delete", f"{self.tag}br"], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=True)


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # what a client (sbatch, sinfo, ...) needs: SLURM_CONF
    processes: list[subprocess.Popen] = field(default_factory=list)
    nodes: Nodes | None = None  # None: one node, this machine

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
        if self.nodes:
            self.nodes.remove()
        shutil.rmtree(self.root, ignore_errors=True)

    def start_slurmd(self, node: int) -> None:
        """Starts a node's slurmd (again: a node that was lost comes back)."""
        command = self.nodes.command(node, "slurmd", "-D", "-f", self.env["SLURM_CONF"])
        self.processes.append(
            _daemon(self.root, *command, env=self.env, name=f"slurmd-{self.nodes.names[node]}")
        )

    def node_states(self) -> list[str]:
        """Each node's state in sinfo (idle, alloc, down, ...), or [] while slurmctld does not answer."""
        try:
            return self.run("sinfo", "--Node", "--noheader", "--format=%t", timeout=10).split()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return []

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


def start(nodes: int = 1, timeout: float = 60) -> Cluster:
    """Starts the cluster and waits until `sinfo` shows its nodes idle and slurmdbd has it registered."""
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
    (root / "slurmctld").mkdir()
    host = socket.gethostname().split(".")[0]
    network = None
    if nodes == 1:
        node_lines = f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN"
        node_list, ctld_addr = host, ""
    else:
        # a /24 of 10.x.y that this session alone uses, and names no other cluster on the machine has
        tag = f"vl{secrets.token_hex(2)}"
        network = Nodes(tag, f"10.{secrets.randbelow(56) + 200}.{secrets.randbelow(256)}",
                        [f"node{i}" for i in range(1, nodes + 1)], root / "hosts")  # fmt: skip
        node_lines = "\n".join(
            f"NodeName={name} NodeAddr={network.addr(node)} CPUs={os.cpu_count()} State=UNKNOWN"
            for node, name in enumerate(network.names)
        )
        node_list, ctld_addr = f"node[1-{nodes}]", f"({network.host_addr})"  # the nodes reach slurmctld there
    for name in network.names if network else [host]:
        (root / f"slurmd-{name}").mkdir()
    db_port, dbd_port, db_user, db_password = _free_port(), _free_port(), "slurm", secrets.token_hex(16)
    conf = root / "slurm.conf"
    conf.write_text(
        TEMPLATE.read_text().format(
            host=host,
            ctld_addr=ctld_addr,
            state_dir=root,
            munge_socket=munge_dir / "munge.socket",
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            dbd_port=dbd_port,
            node_lines=node_lines,
            node_list=node_list,
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
    cluster = Cluster(root, env, nodes=network)
    try:
        if network:
            network.create(host)
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
        cluster.processes.append(_daemon(root, "slurmctld", "-D", "-f", str(conf), env=env))
        if network:
            for node in range(nodes):
                cluster.start_slurmd(node)
        else:
            cluster.processes.append(_daemon(root, "slurmd", "-D", "-f", str(conf), env=env))
        # slurmctld registers its cluster with slurmdbd itself (no `sacctmgr add cluster` needed)
        _wait_for(
            lambda: cluster.node_states() == ["idle"] * nodes and bool(_accounting_clusters(cluster)),
            timeout,
            "idle nodes in sinfo and the cluster in sacctmgr",
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


def _daemon(root: Path, *command: str, env: dict[str, str] | None = None, name: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        stdout=open(root / f"{name or command[0]}.out", "a"),  # noqa: SIM115 (the daemon owns it)
        stderr=subprocess.STDOUT,
    )


def _accounting_clusters(cluster: Cluster) -> list[str] | None:
    """The clusters slurmdbd knows, or None while it does not answer."""
    try:
        return cluster.run("sacctmgr", "--noheader", "--parsable2", "list", "cluster", "format=cluster",
                           timeout=10).split()  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


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
