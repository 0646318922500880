"""The manifest's JSON form: its bytes are what bundle ids and signatures cover, so they are pinned
here; and every field read by the field-driven conversion refuses ``null`` where it needs a value."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from vmbusops.bundle import errors as E
from vmbusops.bundle.manifest import STEP_KINDS, StepKind, manifest_from_dict, parse_manifest

DOC: dict[str, Any] = {
    "name": "n1",
    "version": 3,
    "id": "0b8e2a4c-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
    "issued": "2030-01-01T00:00:00Z",
    "expires": "2030-01-08T00:00:00+00:00",
    "targets": {"vms": ["web*", "db01"], "groups": ["g"], "tags": ["t"]},
    "credential": "lab-admin",
    "steps": [
        {"kind": "copy", "name": "c", "source": "files/a.txt", "destination": "C:\\x", "overwrite": False},
        {
            "kind": "script",
            "file": "s/r.ps1",
            "arguments": ["a", "b"],
            "timeout_seconds": 5,
            "retry": {"attempts": 3, "backoff_seconds": 1, "backoff_factor": 1.5},
        },
        {"kind": "script", "name": "inl", "inline": "Get-Date", "allow_reboot": True},
        {
            "kind": "dsc",
            "mofs": ["d/l.mof"],
            "modules": ["d/m"],
            "meta_config": "d/meta.mof",
            "mode": "test",
            "allow_reboot": True,
            "max_reboots": 3,
            "idempotent": True,
        },
        {
            "kind": "patch",
            "categories": ["Security Updates"],
            "kbs": ["kb123456", "7654321"],
            "check_only": True,
            "allow_reboot": True,
        },
        {"kind": "reboot", "timeout_seconds": 60.5},
        {"kind": "wait-ready"},
    ],
    "execution": {
        "max_concurrency": "50%",
        "max_errors": 2,
        "target_timeout_seconds": 100,
        "delivery_timeout_seconds": 200.5,
        "resume": "abandon",
    },
    "schedule": {
        "cron": "0 2 * * 6",
        "window_seconds": 3600,
        "cutoff_seconds": 60,
        "jitter_seconds": 5,
        "missed": "run-once",
        "timezone": "Europe/Berlin",
    },
    "files": [
        {"path": p, "size": i, "sha256": "a" * 64}
        for i, p in enumerate(["files/a.txt", "s/r.ps1", "d/l.mof", "d/m/x.psm1", "d/meta.mof"])
    ],
}


def test_the_signed_bytes_do_not_change() -> None:
    manifest = manifest_from_dict(DOC)
    assert {step.kind for step in manifest.steps} == set(StepKind) == set(STEP_KINDS)
    data = manifest.to_json()
    assert (
        hashlib.sha256(data).hexdigest() == "814cc577f7c9aaff1010b1170479c484e99aabd199fdf0f7329c4636dc380a45"
    )
    assert parse_manifest(data) == manifest
    assert parse_manifest(data).to_json() == data


def test_steps_name_their_bundle_files() -> None:
    steps = manifest_from_dict(DOC).steps
    assert [s.files() for s in steps] == [
        ("files/a.txt",),
        ("s/r.ps1",),
        (),
        ("d/l.mof", "d/meta.mof"),
        (),
        (),
        (),
    ]
    assert [s.folders() for s in steps][3] == ("d/m",)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("version",), "manifest.version must be an integer from 1 to 9007199254740992"),
        (("files", 0, "size"), "manifest.files[0].size must be an integer from 0 to 1099511627776"),
        (("schedule", "window_seconds"), "manifest.schedule.window_seconds must be a number of seconds"),
    ],
)
def test_null_where_a_value_is_required_is_a_manifest_error(path: tuple[Any, ...], message: str) -> None:
    doc = copy.deepcopy(DOC)
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = None
    with pytest.raises(E.ManifestError) as raised:
        manifest_from_dict(doc)
    assert raised.value.message.startswith(message)
