"""Lab files, derived passwords and the persistent host state."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from vmbusops.errors import ConfigError
from vmbusops.sim import default_state_dir, lab_password, load_lab
from vmbusops.sim.lab import VMState, lab_admin_password, parse_lab
from vmbusops.sim.state import GUEST_SERVICE_INTERFACE, HostStore, guest_path_to_host, split_guest_path


def test_default_lab_has_the_documented_vms() -> None:
    lab = load_lab(None)
    states = {vm.name: vm.state for vm in lab.vms}
    assert states == {
        "web01": VMState.RUNNING,
        "web02": VMState.RUNNING,
        "db01": VMState.RUNNING,
        "legacy01": VMState.OFF,
        "app01": VMState.RUNNING,
    }
    app01 = lab.find("APP01")
    assert app01 is not None and app01.guest_services is False
    user, password = lab.credential("web01")
    assert user == "Administrator"
    assert password == lab_password(lab, "web01") == lab_admin_password(lab)
    # One lab administrator password, derived from the seed; a VM may set its own.
    assert lab_password(lab, "web02") == lab_admin_password(lab)
    assert lab_password(lab, "web01") == lab_password(load_lab(None), "WEB01")
    other_seed = parse_lab('[host]\npassword_seed = "other"\n[[vm]]\nname = "web01"\n')
    assert lab_password(other_seed, "web01") != lab_password(lab, "web01")
    own = parse_lab('[[vm]]\nname = "x"\npassword = "Own-Pa55"\n[[vm]]\nname = "y"\n')
    assert lab_password(own, "x") == "Own-Pa55"
    assert lab_password(own, "y") == lab_admin_password(own)


def test_default_state_dir_follows_vmbusops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBUSOPS_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "sim"


def test_generate_makes_many_running_vms() -> None:
    lab = parse_lab('[generate]\ncount = 200\nprefix = "bench"\nlatency_ms = 5\n')
    assert len(lab.vms) == 200
    assert lab.vms[0].name == "bench001" and lab.vms[-1].name == "bench200"
    assert all(vm.state is VMState.RUNNING and vm.latency_ms == 5 for vm in lab.vms)
    assert len({vm.id for vm in lab.vms}) == 200


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[[vm]]\nname = 'a'\nstate = 'Sleeping'\n", "state must be one of"),
        ("[[vm]]\nname = 'a'\ncolour = 'red'\n", "unknown key(s) colour"),
        ("[[vm]]\nname = 'a'\n[[vm]]\nname = 'A'\n", "appears twice"),
        ("[[vm]]\nname = 'a'\nid = 'not-a-guid'\n", "is not a GUID"),
        ("[host]\nboot_seconds = -1\n", "must be a number >= 0"),
        ("[[vm]\n", "not valid TOML"),
    ],
)
def test_bad_lab_files_are_config_errors(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        parse_lab(text)


def test_missing_lab_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read lab file"):
        load_lab(tmp_path / "nope.toml")


def test_state_persists_across_store_instances(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01 = lab.find("web01")
    assert web01 is not None
    first = HostStore(lab, tmp_path)
    first.update(web01, lambda rt: rt.stopped())
    first.update(web01, lambda rt: rt.with_integration(GUEST_SERVICE_INTERFACE, False))
    second = HostStore(lab, tmp_path)
    rt = second.runtime(web01)
    assert rt.state is VMState.OFF
    assert rt.service_enabled(GUEST_SERVICE_INTERFACE) is False


def test_state_from_another_lab_is_not_reused(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01 = lab.find("web01")
    assert web01 is not None
    HostStore(lab, tmp_path).update(web01, lambda rt: rt.stopped())
    other = parse_lab("[[vm]]\nname = 'web01'\n")
    spec = other.find("web01")
    assert spec is not None
    assert HostStore(other, tmp_path).runtime(spec).state is VMState.RUNNING


def test_corrupt_state_file_is_rebuilt(tmp_path: Path) -> None:
    lab = load_lab(None)
    (tmp_path / "state.json").write_text("{not json", encoding="utf-8")
    web01 = lab.find("web01")
    assert web01 is not None
    assert HostStore(lab, tmp_path).runtime(web01).state is VMState.RUNNING


def _toggle_many(state_dir: str, rounds: int) -> None:
    lab = load_lab(None)
    spec = lab.find("app01")
    assert spec is not None
    store = HostStore(lab, Path(state_dir))
    for _ in range(rounds):
        store.update(spec, lambda rt: rt.with_integration("VSS", not rt.service_enabled("VSS")))


def test_concurrent_processes_do_not_lose_updates(tmp_path: Path) -> None:
    # Four processes flip the same flag 25 times each: an even total keeps it as it was only if
    # no read-modify-write was lost.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_toggle_many, args=(str(tmp_path), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lab = load_lab(None)
    spec = lab.find("app01")
    assert spec is not None
    # 100 flips: back to the initial value only if every flip was applied.
    assert HostStore(lab, tmp_path).runtime(spec).service_enabled("VSS") is True


def _stop_in_another_process(state_dir: str, vm: str) -> None:
    lab = load_lab(None)
    spec = lab.find(vm)
    assert spec is not None
    HostStore(lab, Path(state_dir)).update(spec, lambda rt: rt.stopped())


def _run_in_another_process(target: Callable[..., None], *args: object) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def test_a_change_in_another_process_is_seen_by_the_next_command(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01, web02 = lab.find("web01"), lab.find("web02")
    assert web01 is not None and web02 is not None
    store = HostStore(lab, tmp_path)
    assert store.runtime(web01).state is VMState.RUNNING  # parsed and kept in memory
    _run_in_another_process(_stop_in_another_process, str(tmp_path), "web01")
    assert store.runtime(web01).state is VMState.OFF
    # And the other way round: this process's write is what the next process reads.
    store.update(web02, lambda rt: rt.stopped())
    _run_in_another_process(_stop_in_another_process, str(tmp_path), "db01")
    fresh = HostStore(lab, tmp_path)
    assert fresh.runtime(web02).state is VMState.OFF
    assert store.runtime(lab.vms[2]).state is VMState.OFF  # db01, written after our last read


def test_a_rewrite_that_keeps_inode_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    # Coarse timestamps repeat and a replaced file's inode can be reused: the token each writer
    # leaves in the lock file tells a changed file from an unchanged one all the same.
    lab = load_lab(None)
    web01, app01 = lab.find("web01"), lab.find("app01")
    assert web01 is not None and app01 is not None
    reader, writer = HostStore(lab, tmp_path), HostStore(lab, tmp_path)
    assert reader.runtime(web01).service_enabled("VSS") is True
    state = tmp_path / "state.json"
    before = state.stat()
    os.link(state, tmp_path / "old-inode")  # keep the inode the reader has seen
    # Two changes that keep the file's size: "true" -> "false" and "false" -> "true".
    writer.update(web01, lambda rt: rt.with_integration("VSS", False))
    writer.update(app01, lambda rt: rt.with_integration(GUEST_SERVICE_INTERFACE, True))
    changed = state.read_bytes()
    assert len(changed) == before.st_size
    # The new text in the old inode, with the old modification time, renamed into place.
    with open(tmp_path / "old-inode", "r+b") as fh:
        fh.write(changed)
    os.utime(tmp_path / "old-inode", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp_path / "old-inode", state)
    after = state.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert reader.runtime(web01).service_enabled("VSS") is False
    assert reader.runtime(app01).service_enabled(GUEST_SERVICE_INTERFACE) is True


def test_a_hand_edited_state_file_is_seen(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01 = lab.find("web01")
    assert web01 is not None
    store = HostStore(lab, tmp_path)
    assert store.runtime(web01).state is VMState.RUNNING
    state = tmp_path / "state.json"
    raw = json.loads(state.read_text(encoding="utf-8"))
    raw["vms"]["web01"]["state"] = "Off"
    state.write_text(json.dumps(raw), encoding="utf-8")
    assert store.runtime(web01).state is VMState.OFF


def test_reading_does_not_write_and_a_no_op_update_writes_nothing(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01 = lab.find("web01")
    assert web01 is not None
    store = HostStore(lab, tmp_path)
    store.snapshot()
    state = tmp_path / "state.json"
    first = state.stat()
    for _ in range(3):
        HostStore(lab, tmp_path).snapshot()
        store.runtime(web01)
        store.update(web01, lambda rt: rt)
    after = state.stat()
    assert (after.st_ino, after.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_snapshots_handed_out_do_not_change_afterwards(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01 = lab.find("web01")
    assert web01 is not None
    store = HostStore(lab, tmp_path)
    before = store.snapshot()
    store.update(web01, lambda rt: rt.stopped())
    assert before["web01"].state is VMState.RUNNING
    assert store.snapshot()["web01"].state is VMState.OFF


def test_guest_paths_map_case_insensitively(tmp_path: Path) -> None:
    (tmp_path / "C" / "Program Files" / "App").mkdir(parents=True)
    assert (
        guest_path_to_host(tmp_path, "c:\\program files\\APP\\x.txt")
        == tmp_path / "C/Program Files/App/x.txt"
    )
    assert split_guest_path("C:\\a\\..\\b") is None
    assert split_guest_path("relative\\path") is None
    assert split_guest_path("D:/x/y") == ("D", ["x", "y"])


def test_seeded_files_are_written_once(tmp_path: Path) -> None:
    lab = load_lab(None)
    web01 = lab.find("web01")
    assert web01 is not None
    store = HostStore(lab, tmp_path)
    index = guest_path_to_host(store.guest_root(web01), "C:\\inetpub\\wwwroot\\index.html")
    assert index is not None
    assert index.read_text() == "<html><body>web01</body></html>\n"
    index.write_text("changed by a test")
    assert guest_path_to_host(store.guest_root(web01), "C:\\inetpub\\wwwroot\\index.html") == index
    assert index.read_text() == "changed by a test"
