"""The fleet's messages: every kind round-trips, and anything else a broker hands over is refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmbusops.errors import ConfigError
from vmbusops.fleet import messages as m
from vmbusops.fleet.names import check_host_name, host_of_log_subject, work_consumer

DIGEST = "ab" * 32
hosts = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
texts = st.text(max_size=40)
ids = st.integers(min_value=1, max_value=2**62)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def _facts() -> st.SearchStrategy[m.LogFact | m.Work]:
    record = st.tuples(ids, st.none() | texts, st.integers(0, 9), texts, times, texts)
    start = st.integers(0, 5).flatmap(
        lambda n: st.builds(
            m.RunStartWire,
            step_states=st.lists(st.sampled_from(["pending", "running", "succeeded"]), min_size=n, max_size=n).map(tuple),
            attempts=st.lists(st.integers(0, 3), min_size=n, max_size=n).map(tuple),
            next_seq=ids,
        )
    )
    placement = st.builds(m.RunPlacement, vm=texts, vm_id=texts, host=hosts)
    return st.one_of(
        st.builds(m.JobFact, submission=texts, bundle=st.just(DIGEST), envelope=texts, manifest=texts,
                  source=texts, submitter=st.none() | texts, enable_guest_services=st.booleans(),
                  runs=st.lists(placement, max_size=3).map(tuple), time=times),
        st.builds(m.DispatchFact, job=ids, run=ids, host=hosts, epoch=ids, reason=texts, time=times),
        st.builds(m.SkipFact, job=ids, run=ids, reason=texts, code=texts, time=times),
        st.builds(m.CancelFact, job=ids, run=st.none() | ids, time=times),
        st.builds(m.LostFact, job=ids, run=ids, epoch=ids, reason=texts, time=times),
        st.builds(m.BatchFact, host=hosts, job=ids, run=ids, epoch=ids, n=ids,
                  records=st.lists(record, max_size=3).map(tuple),
                  changes=st.lists(st.fixed_dictionaries({"t": st.sampled_from(["run", "step"])}), max_size=2).map(tuple),
                  time=times),
        hosts.flatmap(lambda h: st.builds(
            m.BatchesFact, host=st.just(h), batches=st.lists(st.builds(
                m.BatchFact, host=st.just(h), job=ids, run=ids, epoch=ids, n=ids,
                records=st.lists(record, max_size=2).map(tuple), changes=st.just(()), time=times,
            ), min_size=1, max_size=3).map(tuple),
        )),
        st.builds(m.MovedFact, host=hosts, job=ids, run=ids, epoch=ids, reason=texts, time=times),
        st.builds(m.RefusedFact, host=hosts, job=ids, run=ids, epoch=ids, code=texts, reason=texts, time=times),
        st.builds(m.DispatchWork, job=ids, run=ids, vm=texts, vm_id=texts, epoch=ids, bundle=st.just(DIGEST),
                  start=start, controller=texts, time=times),
        st.builds(m.CancelWork, job=ids, run=ids, epoch=ids),
    )


def _parse_any(message: m.LogFact | m.Work, data: bytes) -> object:
    if isinstance(message, m.DispatchWork | m.CancelWork):
        return m.parse_work(data)
    if isinstance(message, m.BatchFact | m.BatchesFact | m.MovedFact | m.RefusedFact):
        return m.parse_host(data, host=message.host)
    return m.parse_ctl(data)


@given(_facts(), st.integers(m.OLDEST, m.VERSION))
def test_every_message_round_trips_for_every_protocol_this_build_writes(message: m.LogFact | m.Work, version: int) -> None:
    data = m.encode(message, version)
    assert _parse_any(message, data) == message
    if isinstance(message, m.DispatchWork | m.CancelWork):
        # Work says the newest protocol its sender and host read: the host answers in it.
        assert m.parse_work_versioned(data) == (message, version)
    else:
        assert json.loads(data)["v"] == m.protocol_of(message) == 1  # the oldest that carries it


def test_a_protocol_this_build_does_not_write_is_refused() -> None:
    fact = m.CancelWork(job=1, run=1, epoch=1)
    for version in (m.OLDEST - 1, m.VERSION + 1):
        with pytest.raises(ValueError, match=f"fleet protocol {version} is not one this build writes"):
            m.encode(fact, version)


def test_a_message_of_a_newer_protocol_says_which() -> None:
    body = json.loads(m.encode(m.CancelFact(job=1, run=None, time=0)))
    body["v"] = m.VERSION + 1
    with pytest.raises(m.NewerProtocolError) as info:
        m.parse_ctl(json.dumps(body).encode())
    assert info.value.version == m.VERSION + 1
    assert "upgrade it" in str(info.value)


def test_what_a_run_waits_for_is_carried_from_protocol_2_only() -> None:
    changes = [{"t": "run", "records": 3, "waiting": "session"}, {"t": "step", "index": 0, "state": "running"}]
    assert m.changes_for(changes, 2) == changes
    assert m.changes_for(changes, 1) == [{"t": "run", "records": 3}, changes[1]]
    fact = m.BatchFact(host="HV-A", job=1, run=2, epoch=1, n=1, records=(), changes=tuple(changes), time=1.0)
    group = m.BatchesFact(host="HV-A", batches=(fact,))
    for message in (fact, group):
        data = m.encode(message)
        assert json.loads(data)["v"] == 2
        assert m.parse_host(data, host="HV-A") == message
        # Not for a reader of protocol 1: its changes are made to fit first.
        with pytest.raises(ValueError, match="needs fleet protocol 2 for a reader of 1"):
            m.encode(message, 1)
        # The release before protocols that had it wrote it under 1: read from either.
        body = json.loads(data)
        body["v"] = 1
        assert m.parse_host(json.dumps(body).encode(), host="HV-A") == message
    stripped = m.BatchFact(host="HV-A", job=1, run=2, epoch=1, n=1, records=(),
                           changes=tuple(m.changes_for(changes, 1)), time=1.0)  # fmt: skip
    assert json.loads(m.encode(stripped))["v"] == 1
    assert m.parse_host(m.encode(stripped, 1), host="HV-A") == stripped


def test_message_ids_name_what_makes_a_fact_the_same_fact() -> None:
    a = m.BatchFact(host="HV-A", job=3, run=7, epoch=2, n=5, records=(), changes=(), time=1.0)
    assert a.msg_id() == "batch-HV-A-3-7-2-5"
    assert m.DispatchFact(job=3, run=7, host="HV-B", epoch=2, reason="", time=0).msg_id() == "dispatch-3-7-2"
    assert m.CancelFact(job=3, run=None, time=0).msg_id() == "cancel-3-all"
    b = m.BatchFact(host="HV-A", job=3, run=8, epoch=1, n=1, records=(), changes=(), time=1.0)
    assert m.BatchesFact(host="HV-A", batches=(a, b)).msg_id() == "batches-HV-A-3-7-2-5-2"


def _batch(**over: object) -> bytes:
    body = json.loads(m.encode(m.BatchFact(host="HV-A", job=1, run=2, epoch=1, n=1, records=(), changes=(), time=1.0)))
    body.update(over)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (_batch(v=0), "version 0, expected 1 to"),
        (_batch(v=True), "version True"),
        (_batch(v="2"), "version '2'"),
        (_batch(v=m.VERSION + 1), f"fleet protocol {m.VERSION + 1}; this vmbusops reads"),
        (_batch(kind="explode"), "unknown kind 'explode'"),
        (_batch(extra=1), "unknown field(s) extra"),
        (_batch(job=True), "job: expected an integer, got bool"),
        (_batch(job=0), "job: expected a positive integer"),
        (_batch(n="1"), "n: expected an integer, got str"),
        (_batch(records=[[1, None, 1, "output", 1.0]]), "records: a record is"),
        (_batch(changes=[{"t": "job"}]), "changes: a change is an object"),
        (_batch(host="HV-A.>"), "is not a fleet host name"),
        (_batch(host="HV-B"), "claims host 'HV-B'"),
    ],
)
def test_a_malformed_host_fact_is_refused_with_why(data: bytes, says: str) -> None:
    with pytest.raises(m.FleetMessageError) as info:
        m.parse_host(data, host="HV-A")
    assert says in str(info.value)


def _batches(*batches: dict[str, object]) -> bytes:
    one = json.loads(_batch())
    del one["v"], one["kind"]
    return json.dumps({"v": 1, "kind": "batches", "host": "HV-A", "batches": [{**one, **b} for b in batches]}).encode()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (json.dumps({"v": 1, "kind": "batches", "host": "HV-A", "batches": []}).encode(), "at least one batch"),
        (_batches({}, {"host": "HV-B"}), "claims host 'HV-B'"),
        (_batches({"extra": 1}), "unknown field(s) extra"),
        (_batches({"kind": "batch"}), "unknown field(s) kind"),
        (_batches({"n": 0}), "expected a positive integer"),
        (_batches({"records": [[1]]}), "a record is"),
        (_batches({"host": "HV-A.>"}), "is not a fleet host name"),
    ],
)
def test_a_malformed_batches_fact_is_refused_whole(data: bytes, says: str) -> None:
    with pytest.raises(m.FleetMessageError) as info:
        m.parse_host(data, host="HV-A")
    assert says in str(info.value)


def test_a_fact_of_one_subject_is_not_accepted_on_another() -> None:
    batch = m.encode(m.BatchFact(host="HV-A", job=1, run=2, epoch=1, n=1, records=(), changes=(), time=1.0))
    with pytest.raises(m.FleetMessageError, match="unknown kind 'batch'"):
        m.parse_ctl(batch)
    with pytest.raises(m.FleetMessageError, match="unknown kind 'batch'"):
        m.parse_work(batch)


def test_a_dispatch_whose_start_does_not_add_up_is_refused() -> None:
    work = m.DispatchWork(job=1, run=1, vm="web01", vm_id="x", epoch=1, bundle=DIGEST,
                          start=m.RunStartWire(step_states=("pending",), attempts=(0,), next_seq=1), controller="c", time=0)
    body = json.loads(m.encode(work))
    body["start"]["attempts"] = [0, 0]
    with pytest.raises(m.FleetMessageError, match="differ in length"):
        m.parse_work(json.dumps(body).encode())
    body["start"] = {"step_states": [], "attempts": [], "next_seq": 1, "more": 1}
    with pytest.raises(m.FleetMessageError, match="exactly the keys"):
        m.parse_work(json.dumps(body).encode())
    body["start"] = {"step_states": [], "attempts": [], "next_seq": 1}
    body["bundle"] = "AB" * 32
    with pytest.raises(m.FleetMessageError, match="SHA-256"):
        m.parse_work(json.dumps(body).encode())


@pytest.mark.parametrize("name", ["", "a.b", "a*", ">", "a b", "x" * 65, "HV-A\n"])
def test_a_host_name_that_is_not_one_subject_token_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not valid"):
        check_host_name(name)


def test_names() -> None:
    assert work_consumer("HV-A") == "host-HV-A"
    assert host_of_log_subject("vmbusops.log.host.HV-A") == "HV-A"
    assert host_of_log_subject("vmbusops.log.ctl") is None
    assert host_of_log_subject("vmbusops.log.host.a.b") is None
