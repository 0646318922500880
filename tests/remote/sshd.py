"""A real OpenSSH server on 127.0.0.1 whose ``powershell`` subsystem is the simulator.

This is how a Windows host serves PSRP over SSH (``Subsystem powershell pwsh.exe -sshs``), with
the simulator in pwsh's place. Everything is private to one directory: the configuration, the
host key, authorized_keys, known_hosts, the lab and the simulator's state. The server listens on
an unprivileged loopback port and is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmbusops.psrp.ssh import SshTarget

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")


def find_sshd() -> str | None:
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sshd:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    client_key: Path
    stranger_key: Path
    known_hosts: Path
    host_public_key: str
    username: str
    _lab: Path | None = None

    @property
    def lab_path(self) -> Path:
        return self.directory / "lab.toml"

    @property
    def staging_root(self) -> Path:
        """The host's staging folder (a real local path: the simulated host is this machine)."""
        return self.directory / "staging"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def target(self, **changes: object) -> SshTarget:
        base = SshTarget(
            host="127.0.0.1",
            port=self.port,
            username=self.username,
            known_hosts=str(self.known_hosts),
            client_keys=(str(self.client_key),),
            use_agent=False,
            connect_timeout=10,
        )
        from dataclasses import replace

        return replace(base, **changes)  # type: ignore[arg-type]

    def use_lab(self, lab: Path) -> None:
        """Serve ``lab`` from now on; a different lab than last time starts from fresh state."""
        if self._lab == lab:
            return
        shutil.copyfile(lab, self.lab_path)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._lab = lab

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid:
                pids.append(int(entry))
        return pids

    def kill_sessions(self) -> int:
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_sshd(directory: Path, sshd: str) -> Sshd:
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "ssh_host_ed25519_key"
    client_key = directory / "client_ed25519"
    stranger_key = directory / "stranger_ed25519"
    host_pub = _keygen(host_key, "vmbusops-test-host")
    client_pub = _keygen(client_key, "vmbusops-test-client")
    _keygen(stranger_key, "vmbusops-test-stranger")
    (directory / "authorized_keys").write_text(client_pub + "\n")
    os.chmod(directory / "authorized_keys", 0o600)
    port = _free_port()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (directory / "state").mkdir(exist_ok=True)
    sim = f"{sys.executable} -m vmbusops.sim --lab {directory / 'lab.toml'} --state-dir {directory / 'state'}"
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {directory / 'sshd.pid'}",
                f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "PrintMotd no",
                "LogLevel ERROR",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                f"Subsystem powershell {sim}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # the privilege separation directory
    log = (directory / "sshd.log").open("wb")
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited at start: {(directory / 'sshd.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("sshd did not start listening within 15 s") from None
            time.sleep(0.05)
    import getpass

    return Sshd(
        directory=directory,
        port=port,
        process=process,
        client_key=client_key,
        stranger_key=stranger_key,
        known_hosts=known_hosts,
        host_public_key=host_pub,
        username=getpass.getuser(),
    )
