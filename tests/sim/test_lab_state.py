"""Lab files, derived passwords and the persistent host state."""

from __future__ import annotations

import multiprocessing
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
