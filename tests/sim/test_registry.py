"""The simulator's one registry of commands (``vmbusops.sim.cmdlets``)."""

from __future__ import annotations

from vmbusops.sim.cmdlets import GUEST, GUEST_CMDLETS, HOST_CMDLETS


def test_every_guest_cmdlet_is_listed_under_its_own_name() -> None:
    for cls in set(GUEST_CMDLETS.values()):
        assert GUEST_CMDLETS.get(cls.name.casefold()) is cls, cls.name


def test_a_cmdlet_the_guest_runs_is_never_also_refused_as_not_simulated() -> None:
    assert not set(GUEST.cmdlets) & GUEST.not_simulated


def test_the_host_and_the_guest_are_separate_namespaces() -> None:
    assert "get-vm" not in GUEST_CMDLETS
    assert "write-output" not in HOST_CMDLETS
