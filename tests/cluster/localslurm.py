"""A throw-away one-node SLURM cluster on this machine (root only).

`LocalSlurm` installs Debian's slurm and munge packages when they are missing,
starts munged, slurmctld and slurmd in the foreground as child processes (no
systemd), with their key, socket, state, spool and logs under one temporary
directory and on free ports, and stops exactly those processes by PID.
Clients (sbatch, squeue, scancel, Snakemake's SLURM executor and the jobs it
submits) find the cluster through the SLURM_CONF variable of `env()`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld"}
DAEMONS["slurmd"] = "/usr/sbin/slurmd"
TEMPLATE = Path(__file__).with_name("slurm.conf.in")


def install_packages() -> None:
    """apt-get install the SLURM and munge packages unless all binaries are there."""
    needed = [*DAEMONS.values(), "/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/scancel"]
    if all(os.access(p, os.X_OK) for p in needed):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    """Three quarters of this machine's memory, the node's RealMemory."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 3 // 4 // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """Context manager: a running one-node cluster rooted at `root`."""

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.leftovers: list[str] = []  # job processes that outlived the cluster

    def env(self) -> dict[str, str]:
        path = f"{self.root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=path)

    def __enter__(self) -> LocalSlurm:
        atexit.register(self.stop)
        # A plain `kill` of the test run still stops the daemons (atexit does not
        # run on SIGTERM by default).
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a local SLURM cluster needs root (daemons, munge user)")
        install_packages()
        # munged wants a socket directory that all may enter and only it may write.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for sub in ("state", "spool", "log", "run", "bin"):
            (self.root / sub).mkdir(exist_ok=True)
        munge_dir = self.root / "munge"
        munge_dir.mkdir(exist_ok=True)
        munge_dir.chmod(0o711)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(munge_dir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        fields = {
            "ROOT": str(self.root),
            "HOST": self.host,
            "CTLD_PORT": str(free_port()),
            "SLURMD_PORT": str(free_port()),
            "CPUS": str(self.cpus),
            "MEMORY_MB": str(memory_mb()),
        }
        text = TEMPLATE.read_text()
        for name, value in fields.items():
            text = text.replace(f"@{name}@", value)
        self.conf.write_text(text)
        # Snakemake's slurm-jobstep plugin drops every SLURM_* variable, SLURM_CONF
        # included, before its `srun` inside a job; this srun puts it back.
        srun = self.root / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF="{self.conf}"\nexec /usr/bin/srun "$@"\n')
        srun.chmod(0o755)

        self._spawn(
            "munged",
            [
                DAEMONS["munged"],
                "--foreground",
                f"--key-file={key}",
                f"--socket={munge_dir / 'munge.socket'}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            user="munge",
        )
        self._wait(lambda: (munge_dir / "munge.socket").exists(), "munged's socket")
        self._spawn("slurmctld", [DAEMONS["slurmctld"], "-D", "-i", "-f", str(self.conf)])
        self._wait(self._controller_up, "slurmctld to answer")
        self._spawn("slurmd", [DAEMONS["slurmd"], "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, f"node {self.host} to be idle")

    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            user=user,
            group=user,
            extra_groups=[] if user else None,
            start_new_session=True,
        )
        log.close()

    def _wait(self, ready, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                        + self.logs()
                    )
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}:\n" + self.logs())

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=30, check=check
        )

    def _controller_up(self) -> bool:
        return self.run("scontrol", "ping", check=False).stdout.count("UP") > 0

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout
        return out.strip().rstrip("*") == "idle"

    def _jobs_active(self) -> bool:
        out = self.run("squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING", "-o", "%i", check=False)
        return out.returncode == 0 and bool(out.stdout.strip())

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge/munged.log"]:
            if path.exists():
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started, by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # Job steps outlive slurmd; cancelled jobs end before it stops.
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._jobs_active():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Anything still carrying this cluster's SLURM_CONF was started by its jobs.
        for pid, cmdline in self.job_processes():
            self.leftovers.append(f"{pid} {cmdline}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def job_processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process whose environment names this slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                    found.append((int(proc.name), cmdline.decode(errors="replace")[:200]))
            except OSError:
                continue
        return found


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
