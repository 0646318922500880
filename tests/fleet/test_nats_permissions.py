"""Per-host users (fleet_permissions): a host reaches its own subjects and nothing else."""

from __future__ import annotations

import hashlib

import pytest
from tests.fleet.conftest import CONTROLLER, PASSWORDS, host_broker

from vmbusops.fleet import names
from vmbusops.fleet.broker import BrokerError
from vmbusops.fleet.nats_broker import open_broker
from vmbusops.fleet.natsserver import NatsServer


async def test_a_host_uses_its_own_subjects_and_no_others(fleet_server: NatsServer) -> None:
    bundle = b"signed bundle bytes" * 1000
    digest = hashlib.sha256(bundle).hexdigest()
    async with open_broker(fleet_server.url, user=CONTROLLER, password=PASSWORDS[CONTROLLER]) as ctl:
        await ctl.ensure_fleet()
        for host in ("HV-A", "HV-B"):
            await ctl.ensure_work_consumer(host)
            await ctl.publish(names.work_subject(host), f"work for {host}".encode(), msg_id=host)
        await ctl.put_bundle(digest, bundle)
        await ctl.kv_put(names.HOSTS_BUCKET, "HV-B", b"B's entry")

        async with host_broker(fleet_server, "HV-A") as a:
            # what it may do
            ack = await a.publish(names.host_log_subject("HV-A"), b"fact", msg_id="a-1")
            assert ack.stream == names.LOG_STREAM
            work = await a.fetch_work("HV-A", batch=5, timeout=5)
            assert [d.data for d in work] == [b"work for HV-A"]
            await a.ack(work[0])
            rev = await a.kv_put(names.HOSTS_BUCKET, "HV-A", b"A's entry")
            entry = await a.kv_get(names.HOSTS_BUCKET, "HV-A")
            assert entry is not None and entry.revision == rev
            created = await a.kv_create(names.PLACEMENT_BUCKET, "vm-1", b"on A")
            assert created is not None
            assert await a.kv_create(names.PLACEMENT_BUCKET, "vm-1", b"on A") is None
            assert await a.kv_update(names.PLACEMENT_BUCKET, "vm-1", b"x", last=created) is not None
            assert await a.get_bundle(digest) == bundle

            # what it may not: each refused at once, as a BrokerError naming the subject
            refused = {
                "log of B": a.publish(names.host_log_subject("HV-B"), b"lie", msg_id="b-1"),
                "ctl log": a.publish(names.CTL_SUBJECT, b"lie", msg_id="c-1"),
                "B's work": a.fetch_work("HV-B", batch=1, timeout=5),
                "create a stream": a.ensure_fleet(),
                "create a consumer": a.ensure_work_consumer("HV-A"),
                "delete a consumer": a.delete_work_consumer("HV-B"),
                "B's host entry": a.kv_put(names.HOSTS_BUCKET, "HV-B", b"lie"),
                "read B's host entry": a.kv_get(names.HOSTS_BUCKET, "HV-B"),
                "the lease": a.kv_create(names.LEASES_BUCKET, "controller", b"me"),
                "read the log": a.read_log(after=0, batch=1, timeout=5),
                "write a bundle": a.put_bundle("0" * 64, b"evil"),
            }
            for what, call in refused.items():
                with pytest.raises(BrokerError, match="does not let this user") as caught:
                    await call
                assert PASSWORDS["HV-A"] not in str(caught.value), what

        # B's work is still there for B, untouched
        async with host_broker(fleet_server, "HV-B") as b:
            assert [d.data for d in await b.fetch_work("HV-B", batch=5, timeout=5)] == [b"work for HV-B"]


async def test_a_wrong_password_is_a_broker_error_without_it(fleet_server: NatsServer) -> None:
    with pytest.raises(BrokerError) as caught:
        async with open_broker(
            fleet_server.url, user="HV-A", password="not-the-password-42", request_timeout=2.0
        ):
            pass
    assert "not-the-password-42" not in str(caught.value)
    assert "\n" not in caught.value.message
    assert caught.value.message.endswith("the server refused the user or its password (authorization violation)")
