"""A real one-node SLURM cluster for the tests (Debian's slurmctld, slurmd, munge; slurmdbd + mariadb for
accounting), started as root without systemd in a folder under /tmp and stopped by PID.

Facts of SLURM 22.05 this relies on: there is no ``CgroupPlugin=disabled`` (no cgroup.conf is written and
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none`` need none); munged refuses a socket folder
that is not executable by everyone (pytest's ``tmp_path`` is 0700: the folder is made under /tmp with mode
755); slurmdbd traffic ignores ``AuthInfo=socket=`` and needs ``AccountingStoragePass=<munge socket>``;
``sinfo`` blocks for minutes while slurmctld is down (every client call has a timeout). ``SLURM_CONF`` is
exported (:meth:`SlurmCluster.activate`) so that submitit's sbatch/sacct and the tasks inherit it.

Also usable by hand to try a sweep file before sending it to a real cluster::

    python tests/slurm_cluster.py start [--accounting]     # prints: export SLURM_CONF=...
    kill PID ...                                           # the PIDs it printed
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing_programs(accounting: bool = False) -> list[str]:
    """Programs (and their Debian packages) this machine lacks to start the cluster."""
    need = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client"}
    if accounting:
        need.update({"slurmdbd": "slurmdbd", "mariadbd": "mariadb-server", "mariadb-install-db": "mariadb-server"})
    return [f"{prog} (apt-get install {pkg})" for prog, pkg in need.items()
            if shutil.which(prog) is None and not Path("/usr/sbin", prog).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prog(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin") / name)


class SlurmCluster:
    """One controller and one compute node (``CPUs`` cores, optionally ``gpus`` fake GPU gres) on this host."""

    def __init__(self, name: str = "nctest", accounting: bool = False, cpus: int = 4, gpus: int = 0,
                 root: Path | None = None) -> None:
        self.name, self.accounting, self.cpus, self.gpus = name, accounting, cpus, gpus
        self.root = root or Path(tempfile.mkdtemp(prefix=f"ncutils-slurm-{name}-", dir="/tmp"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.node = f"{name}-node"
        self.partition = "debug"
        self.pids: dict[str, int] = {}

    # ------------------------------------------------------------------ #
    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def activate(self) -> None:
        """Export ``SLURM_CONF`` in this process (submitit's sbatch/squeue/sacct and the tasks inherit it)."""
        os.environ["SLURM_CONF"] = str(self.conf)

    def cmd(self, *args: str, timeout: float = 20, check: bool = True) -> str:
        """A SLURM client command against this cluster (always with a timeout: clients block while the
        controller is down)."""
        res = subprocess.run(["timeout", str(int(timeout)), *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout + 5)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip() or res.stdout}")
        return res.stdout

    # ------------------------------------------------------------------ #
    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge", "log"):
            (r / sub).mkdir(exist_ok=True)
            (r / sub).chmod(0o755)
        self.munge_socket = r / "munge" / "munge.socket.2"
        ports = {"ctld": _free_port(), "slurmd": _free_port(), "dbd": _free_port(), "db": _free_port()}
        self.ports = ports
        acct = ""
        if self.accounting:
            acct = (f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
                    f"AccountingStoragePort={ports['dbd']}\nAccountingStoragePass={self.munge_socket}\n"
                    "JobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=30\n")
        else:
            acct = "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n"
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        host = socket.gethostname()
        self.conf.write_text(f"""\
ClusterName={self.name}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=600
SchedulerParameters=sched_interval=1
JobCompType=jobcomp/none
GresTypes=gpu
{acct}NodeName={self.node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000{gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        self.conf.chmod(0o644)
        gres_conf = f"AutoDetect=off\nNodeName={self.node} Name=gpu Count={self.gpus} File=/dev/null\n"
        (r / "gres.conf").write_text(gres_conf if self.gpus else "")

    def _spawn(self, name: str, args: list[str], pidfile: Path | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=log, start_new_session=True)
        self.pids[name] = proc.pid
        self._procs = getattr(self, "_procs", {})
        self._procs[name] = proc

    def _wait(self, what: str, ok, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while not ok():
            for name, proc in getattr(self, "_procs", {}).items():
                if proc.poll() is not None:
                    log = (self.root / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}: {log}")
            if time.time() > deadline:
                raise RuntimeError(f"timed out waiting for {what} (logs in {self.root}/log)")
            time.sleep(0.2)

    def _start_accounting(self) -> None:
        r = self.root
        data = r / "mysql"
        subprocess.run([_prog("mariadb-install-db"), "--user=root", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        sock = r / "mysql.sock"
        self._spawn("mariadbd", [_prog("mariadbd"), "--no-defaults", "--user=root", f"--datadir={data}",
                                 f"--socket={sock}", f"--port={self.ports['db']}", "--bind-address=127.0.0.1",
                                 f"--pid-file={r}/mariadb.pid", "--skip-log-bin", "--innodb-buffer-pool-size=32M"])
        self._wait("mariadb", lambda: sock.exists())
        dbd = r / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports['dbd']}
SlurmUser=root
PidFile={r}/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['db']}
StorageUser=root
StorageLoc=slurm_acct_{self.name.replace('-', '_')}
""")
        dbd.chmod(0o600)
        self._spawn("slurmdbd", [_prog("slurmdbd"), "-D"])  # reads slurmdbd.conf next to SLURM_CONF
        deadline = time.time() + 60
        while True:  # sacctmgr answers once slurmdbd listens
            res = subprocess.run(["timeout", "10", "sacctmgr", "-i", "add", "cluster", self.name], env=self.env,
                                 capture_output=True, text=True)
            if res.returncode == 0 or "already exists" in res.stdout + res.stderr:
                break
            if time.time() > deadline or self._procs["slurmdbd"].poll() is not None:
                raise RuntimeError(f"slurmdbd did not answer: {res.stderr.strip() or res.stdout.strip()}")
            time.sleep(0.5)

    def start(self) -> SlurmCluster:
        self._write_config()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._spawn("munged", [_prog("munged"), "-F", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={self.root}/munge/munged.pid", f"--log-file={self.root}/log/munged.log",
                               f"--seed-file={self.root}/munge/munged.seed"])
        self._wait("munged", lambda: self.munge_socket.exists())
        if self.accounting:
            self._start_accounting()
        self._spawn("slurmctld", [_prog("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_prog("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait("the node to be idle", self._idle, timeout=60)
        return self

    def _idle(self) -> bool:
        try:
            out = self.cmd("sinfo", "-h", "-N", "-o", "%T", timeout=5, check=False)
        except subprocess.TimeoutExpired:
            return False
        return out.strip().startswith("idle")

    def stop(self) -> None:
        if "slurmctld" in getattr(self, "_procs", {}) and self._procs["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            proc = getattr(self, "_procs", {}).get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def _cancel_all_jobs(self) -> None:
        """Cancel this cluster's jobs and wait (a few seconds) until they are gone: a slurmstepd whose slurmd
        stopped would outlive the cluster."""
        try:
            self.cmd("scancel", "--full", "-u", "root", timeout=10, check=False)
            deadline = time.time() + 10
            while self.cmd("squeue", "-h", timeout=5, check=False).strip() and time.time() < deadline:
                time.sleep(0.3)
        except subprocess.TimeoutExpired:
            pass

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        missing = missing_programs("--accounting" in argv)
        if missing:
            print("missing: " + ", ".join(missing), file=sys.stderr)
            return 1
        c = SlurmCluster(accounting="--accounting" in argv).start()
        print(f"export SLURM_CONF={c.conf}   # stop: kill {' '.join(str(p) for p in c.pids.values())}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
