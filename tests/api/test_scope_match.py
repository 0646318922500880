"""A principal's VM scope says what fnmatch says of each glob, casefolded, whatever the globs."""

from __future__ import annotations

import fnmatch

import pytest

from vmbusops.api.auth import Operation, Principal

NAMES = ["web01", "WEB02", "db01", "web[1]", "a*b", "", "x.y", "web01\n", "Ǆ-vm"]
SCOPES = [(), ("*",), ("web*",), ("WEB0?", "db*"), ("web[[]1]",), ("a[*]b",), ("[!w]*",), ("ǆ*",), ("x.y",)]


def principal(vms: tuple[str, ...]) -> Principal:
    return Principal(
        id="p", kind="token", name="n", operations=frozenset({Operation.READ}), vms=vms,
        created_at=0.0, expires_at=None, revoked_at=None,
    )  # fmt: skip


@pytest.mark.parametrize("scope", SCOPES)
def test_a_scope_covers_what_fnmatch_says(scope: tuple[str, ...]) -> None:
    who = principal(scope)
    for name in NAMES:
        expected = any(fnmatch.fnmatchcase(name.casefold(), g.casefold()) for g in scope)
        assert who.covers_vm(name) is expected, (scope, name)
    for job in (NAMES[:2], NAMES[2:5], ["db01"], ["web01", "WEB02"]):
        assert who.sees_job(job) is all(who.covers_vm(vm) for vm in job), (scope, job)
    assert who.sees_job([]) is ("*" in scope)
