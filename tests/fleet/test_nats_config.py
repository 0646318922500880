"""What an operator runs: ``vmbusops fleet nats-config``'s output, on a real nats-server; TLS."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.api.test_tls import issue, write

from vmbusops.cli.fleet_nats_cmd import nats_config_cmd, password_variable
from vmbusops.errors import ConfigError
from vmbusops.fleet import names
from vmbusops.fleet.broker import Broker, BrokerError
from vmbusops.fleet.nats_broker import NatsBroker, open_broker
from vmbusops.fleet.natsserver import NatsServer, TlsFiles, _free_port


def as_broker(broker: NatsBroker) -> Broker:
    """NatsBroker is a Broker (mypy checks this function)."""
    return broker


async def test_the_printed_configuration_runs_with_passwords_from_the_environment(
    make_nats_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    port = _free_port()
    result = CliRunner().invoke(
        nats_config_cmd,
        ["--host", "HV-A", "--host", "HV-B", "--listen", f"127.0.0.1:{port}",
         "--store-dir", str(tmp_path / "store")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.output
    env = {password_variable(u): f"pw-{u}-0b7e" for u in ("controller", "HV-A", "HV-B")}
    assert not any(pw in text for pw in env.values())
    assert "$VMBUSOPS_NATS_PASSWORD_HV_A" in text
    server = make_nats_server(config_text=text, port=port, env=env)

    async with open_broker(server.url, user="controller", password=env[password_variable("controller")]) as ctl:
        await ctl.ensure_fleet()
        await ctl.ensure_work_consumer("HV-B")
        await ctl.publish(names.work_subject("HV-B"), b"work", msg_id="w")
    async with open_broker(
        server.url, user="HV-B", password=env[password_variable("HV-B")], host="HV-B"
    ) as b:
        assert (await b.publish(names.host_log_subject("HV-B"), b"fact", msg_id="f")).seq == 1
        assert [d.data for d in await b.fetch_work("HV-B", batch=1, timeout=5)] == [b"work"]
        with pytest.raises(BrokerError, match=re.escape("publish to vmbusops.log.host.HV-A")):
            await b.publish(names.host_log_subject("HV-A"), b"lie", msg_id="l")


def test_bad_host_names_and_clashing_users_are_usage_errors() -> None:
    from vmbusops.cli.fleet_nats_cmd import fleet_nats_config

    with pytest.raises(ConfigError, match=re.escape("fleet host name 'HV.A'")):
        fleet_nats_config(["HV.A"])
    with pytest.raises(ConfigError, match="share the password variable"):
        fleet_nats_config(["HV-A", "HV_A"])
    with pytest.raises(ConfigError, match="controller user"):
        fleet_nats_config(["controller"])


async def test_tls_with_a_private_ca(make_nats_server: Callable[..., NatsServer], tmp_path: Path) -> None:
    ca = issue("fleet test CA", None, ca=True)
    ca_cert, _ = write(tmp_path, "ca", ca)
    cert, key = write(tmp_path, "server", issue("nats", ca, server=True))
    server = make_nats_server(tls=TlsFiles(cert=cert, key=key))
    assert server.url.startswith("tls://")
    async with open_broker(server.url, tls_ca=str(ca_cert)) as broker:
        await as_broker(broker).ensure_fleet()
        assert (await broker.publish(names.CTL_SUBJECT, b"over tls", msg_id="t")).seq == 1
