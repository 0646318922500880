"""A NATS server whose TLS certificate the client does not trust: every way in says so, in one
line and at once (nats-py's own clean-up after a failed TLS upgrade waits for ever)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from tests.api.conftest import VMBUSOPS
from tests.api.test_tls import issue, write

from vmbusops.fleet.broker import BrokerError
from vmbusops.fleet.nats_broker import open_broker
from vmbusops.fleet.natsserver import NatsServer, TlsFiles

#: Only a guard against a hang: a refusal takes well under a second.
HANG = 60


@pytest.fixture
def untrusted_server(make_nats_server: Callable[..., NatsServer], tmp_path: Path) -> NatsServer:
    ca = issue("a CA the client never heard of", None, ca=True)
    cert, key = write(tmp_path, "server", issue("nats", ca, server=True))
    return make_nats_server(tls=TlsFiles(cert=cert, key=key))


async def test_the_broker_refuses_an_untrusted_certificate_in_one_line(untrusted_server: NatsServer) -> None:
    with trio.fail_after(HANG), pytest.raises(BrokerError) as refused:
        async with open_broker(untrusted_server.url, user="u", password="never-shown-31c"):
            pass
    text = str(refused.value)
    assert text.startswith(f"connect to {untrusted_server.url}: the server's TLS certificate is not trusted")
    assert "\n" not in text and "never-shown-31c" not in text


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMBUSOPS, *args], capture_output=True, text=True, timeout=HANG, check=False,
        env={**os.environ, "VMBUSOPS_HOME": str(home)},
    )  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        ["fleet", "serve", "--listen", "127.0.0.1:0", "--nats"],
        ["agent", "--host", "sim", "--listen", "127.0.0.1:0", "--fleet-host", "HV-T", "--fleet"],
    ],
    ids=["controller", "agent"],
)
def test_controller_and_agent_stop_in_one_line(
    untrusted_server: NatsServer, vmbusops_home: Path, command: list[str]
) -> None:
    done = run_cli(*command, untrusted_server.url, home=vmbusops_home)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vmbusops:")]
    assert len(errors) == 1, done.stderr
    assert untrusted_server.url in errors[0] and "TLS certificate is not trusted" in errors[0], done.stderr
