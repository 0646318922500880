"""A home for a real ``vmbusops agent`` over the simulator, shared by the agent-facing benches.

``prepare_home`` writes what an operator would: a trust policy with one signing key, the lab
credential, an API token with every operation, a lab of the named VMs and the agent's config;
``running_agent`` starts ``vmbusops agent --listen 127.0.0.1:0`` on it and stops it after.
``sse_events`` reads one job's Server-Sent Events with h11 over a plain socket, so a follower
costs the bench as little as possible.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import tomli_w

PASSWORD = "Bench!" + os.urandom(6).hex()


@dataclass
class AgentHome:
    home: Path
    token: str
    key: Any  # vmbusops.bundle.crypto.PrivateKey

    def bundle(self, name: str, vm: str, script: str) -> Path:
        """A signed one-step bundle that runs ``script`` in ``vm`` (each name once: bundles are
        accepted once)."""
        from vmbusops.bundle.build import build_bundle, sign_bundle

        src = self.home / "src" / name
        src.mkdir(parents=True)
        (src / "bundle.toml").write_text(tomli_w.dumps({
            "name": name, "version": 1, "credential": "lab-admin", "targets": {"vms": [vm]},
            "steps": [{"kind": "script", "name": "stream", "inline": script}],
        }))  # fmt: skip
        out = self.home / "src" / f"{name}.vmb"
        build_bundle(src, out)
        sign_bundle(out, self.key)
        return out


def prepare_home(home: Path, vms: Sequence[str], *, max_runspaces: int = 64, max_sessions: int = 32) -> AgentHome:
    """Write the home's trust policy, credential, token, lab and config (in this process's
    ``VMBUSOPS_HOME``, which it sets)."""
    os.environ["VMBUSOPS_HOME"] = str(home)
    from vmbusops.api.auth import Operation, PrincipalStore
    from vmbusops.bundle.crypto import PrivateKey
    from vmbusops.bundle.manifest import StepKind
    from vmbusops.bundle.paths import trust_policy_path
    from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
    from vmbusops.credentials import CredentialStore, Secret

    key = PrivateKey.generate()
    scope = Scope(keys=(), vms=("*",), credentials=("lab-admin",), steps=frozenset(StepKind), threshold=1)
    save_trust_policy(
        TrustPolicy().with_key(TrustedKey(name="bench", public=key.public_key()), scope), trust_policy_path()
    )
    os.environ.setdefault("VMBUSOPS_CREDENTIAL_PASSPHRASE", "bench-" + os.urandom(4).hex())
    CredentialStore().set("lab-admin", "Administrator", Secret(PASSWORD))
    with PrincipalStore() as store:
        _, token = store.create_token(
            name="bench", operations=frozenset(Operation), vms=["*"], expires_at=None
        )
    lab = home / "lab.toml"
    lines = ["[host]", 'name = "HV-BENCH"', "session_open_ms = 0", "boot_seconds = 0.2", ""]
    for vm in vms:
        lines += ["[[vm]]", f'name = "{vm}"', f'password = "{PASSWORD}"', ""]
    lab.write_text("\n".join(lines))
    (home / "config.toml").write_text(
        "[agent]\nsubmit_burst = 100000\nsubmit_rate_per_minute = 1000000\n"
        f'[sim]\nlab = "{lab}"\n[host]\nmax_runspaces = {max_runspaces}\nmax_sessions = {max_sessions}\n'
    )
    return AgentHome(home=home, token=token, key=key)


@dataclass
class Agent:
    pid: int
    url: str


@contextmanager
def running_agent(home: Path) -> Iterator[Agent]:
    """``vmbusops agent`` on a loopback port of its choosing, stopped (SIGTERM) on exit."""
    exe = str(Path(sys.executable).parent / "vmbusops")
    env = {**os.environ, "VMBUSOPS_HOME": str(home)}
    with (home / "agent.log").open("wb") as log:
        # VMBUSOPS_BENCH_PROFILE=FILE runs the agent under cProfile, written to FILE when it stops.
        profile = os.environ.get("VMBUSOPS_BENCH_PROFILE")
        wrap = [sys.executable, "-m", "cProfile", "-o", profile] if profile else []
        agent = subprocess.Popen([*wrap, exe, "agent", "--listen", "127.0.0.1:0", "--log-level", "warning"],
                                 stdout=subprocess.PIPE, stderr=log, env=env)  # fmt: skip
        try:
            assert agent.stdout is not None
            line = agent.stdout.readline()
            yield Agent(pid=agent.pid, url=json.loads(line)["listen"][0])
        except BaseException:
            # The home is a temporary directory: say what the agent logged before it goes.
            sys.stderr.write((home / "agent.log").read_text(errors="replace")[-4000:])
            raise
        finally:
            agent.terminate()
            agent.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sse_events(url: str, token: str, job_id: int, query: str = "") -> Iterator[tuple[bytes, bytes]]:
    """(event, data) of each SSE event of ``GET /v1/jobs/{job_id}/events``, as they arrive, until
    the server ends the response (after the job's ``end`` event)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        request = h11.Request(method="GET", target=f"/v1/jobs/{job_id}/events{query}", headers=[
            ("Host", parts.netloc), ("Authorization", f"Bearer {token}"), ("Accept", "text/event-stream"),
            ("Connection", "close")])  # fmt: skip
        sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
        buffer = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(1 << 16))
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise RuntimeError(f"GET events: HTTP {event.status_code}")
                continue
            if not isinstance(event, h11.Data):
                return
            buffer += bytes(event.data)
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                name = data = b""
                for line in block.split(b"\n"):
                    if line.startswith(b"event: "):
                        name = line[7:]
                    elif line.startswith(b"data: "):
                        data = line[6:]
                if name:
                    yield name, data


@dataclass
class Answer:
    status_code: int
    text: str


class PlainClient:
    """``GET`` over one kept-alive HTTP/1.1 connection, with h11 over a plain socket as
    :func:`sse_events` reads (opened again when the server closes it): the same round trip as an
    ``httpx.Client`` makes, for a fraction of the client's own CPU."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self._address = (parts.hostname, parts.port)
        self._headers = [("Host", parts.netloc), ("Authorization", f"Bearer {token}"), ("Accept", "*/*")]
        self._sock: socket.socket | None = None
        self._conn = h11.Connection(h11.CLIENT)

    def get(self, path: str) -> Answer:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=120)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = h11.Connection(h11.CLIENT)
        conn, sock = self._conn, self._sock
        sock.sendall(conn.send(h11.Request(method="GET", target=path, headers=self._headers))
                     + conn.send(h11.EndOfMessage()))  # fmt: skip
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(1 << 16))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise RuntimeError(f"GET {path}: {event!r}")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # the server closes the connection (Hypercorn does every 1,000 requests)
            self.close()
        return Answer(status, body.decode())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> PlainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
