"""A real ``vmbusops agent`` process on loopback (ephemeral port) over the simulator, per test.

Tenants: ``a-*`` VMs belong to tenant A, ``b-*`` to tenant B. Tokens are made through the same
store the CLI uses and never printed; assertion messages only ever show token ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from tests.builders import VM, write_lab
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.api.auth import Operation, PrincipalStore
from vmbusops.bundle.crypto import PrivateKey

VMBUSOPS = str(Path(sys.executable).parent / "vmbusops")
TENANT_VMS = [VM("a-web01"), VM("a-web02"), VM("b-db01")]


@dataclass
class Agent:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    key: PrivateKey
    bundles: Path
    tokens: dict[str, str] = field(default_factory=dict)
    stderr_path: Path | None = None

    def bundle(self, vms: list[str], steps: list[dict[str, Any]], **extra: Any) -> Path:
        return signed_bundle(self.bundles, self.key, vms=vms, steps=steps, **extra)

    def headers(self, who: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def client(self, who: str | None = "admin", timeout: float = 30.0) -> httpx.AsyncClient:
        headers = self.headers(who) if who else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        assert self.stderr_path is not None
        out = []
        for line in self.stderr_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def make_tokens(store: PrincipalStore) -> dict[str, str]:
    tokens: dict[str, str] = {}
    specs: dict[str, tuple[frozenset[Operation], list[str], float | None]] = {
        "admin": (frozenset(Operation), ["*"], None),
        "tenant_a": (frozenset({Operation.SUBMIT, Operation.READ, Operation.CANCEL}), ["a-*"], None),
        "tenant_b": (frozenset({Operation.SUBMIT, Operation.READ, Operation.CANCEL}), ["b-*"], None),
        "reader": (frozenset({Operation.READ}), ["*"], None),
        "expired": (frozenset(Operation), ["*"], time.time() - 5),
    }
    for name, (ops, vms, expires) in specs.items():
        _, tokens[name] = store.create_token(name=name, operations=ops, vms=vms, expires_at=expires)
    return tokens


def start_agent(
    home: Path,
    tmp: Path,
    lab: Path,
    *,
    extra_env: dict[str, str] | None = None,
    config: str = "",
    args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VMBUSOPS_HOME": str(home), "VMBUSOPS_LAB": str(lab), **(extra_env or {})}
    if config:
        (home / "config.toml").write_text(config)
    with (tmp / "agent.log").open("ab") as stderr:
        return subprocess.Popen(
            [VMBUSOPS, "agent", "--host", "sim", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )


def wait_ready(process: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"agent exited before ready (code {process.wait()})")
        doc = json.loads(line)
        if doc.get("event") == "ready":
            return str(doc["listen"][0])
    raise AssertionError("agent not ready in time")


@pytest.fixture
def agent_factory(tmp_path: Path, vmbusops_home: Path) -> Iterator[Any]:
    started: list[Agent] = []

    def make(vms: list[VM] | None = None, config: str = "", args: tuple[str, ...] = (), **lab: Any) -> Agent:
        key = PrivateKey.generate()
        trust_and_credential(key)
        labfile = write_lab(tmp_path, vms or TENANT_VMS, **lab)
        with PrincipalStore() as store:
            tokens = make_tokens(store)
        process = start_agent(vmbusops_home, tmp_path, labfile, config=config, args=args)
        bundles = tmp_path / "bundles"
        bundles.mkdir(exist_ok=True)
        agent = Agent(
            url=wait_ready(process), home=vmbusops_home, process=process, key=key, bundles=bundles,
            tokens=tokens, stderr_path=tmp_path / "agent.log",
        )  # fmt: skip
        started.append(agent)
        return agent

    yield make
    for agent in started:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()
        if agent.process.stdout is not None:
            agent.process.stdout.close()


@pytest.fixture
def agent(agent_factory: Any) -> Agent:
    made: Agent = agent_factory()
    return made


async def submit(agent: Agent, path: Path, who: str = "admin") -> httpx.Response:
    async with agent.client(who) as client:
        return await client.post(
            "/v1/jobs",
            content=await trio.Path(path).read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
