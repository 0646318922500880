"""Guest paths: one rule, applied by `bundle verify`, by acceptance (what `run` and the agent do),
by `bundle build`, and by the host just before Copy-VMFile, so none accepts what another refuses."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import pytest
from bundlecraft import Member, make_bundle, make_source, regular, rewrite, trusting
from click.testing import CliRunner

from vmbusops.bundle.build import build_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.dsse import PAYLOAD_TYPE, Envelope
from vmbusops.bundle.errors import BundleSourceError, ManifestError
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import save_trust_policy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import accept_bundle
from vmbusops.cli.exitcodes import BUNDLE_REJECTED, USAGE
from vmbusops.cli.main import cli
from vmbusops.guest_paths import guest_path_problem

GOOD = [
    "C:\\Temp\\file.txt",
    "c:\\ProgramData\\vmbusops\\motd.txt",
    "D:\\Deep\\New Folder\\settings.ini",
    "C:\\Temp\\",  # a folder: Copy-VMFile keeps the file's name
    "C:\\Temp\\nul-not-reserved.txt",
    "C:\\Temp\\CONSOLE.log",
    "C:\\Temp\\com10",
    "C:\\Temp\\COM\u2074.txt",  # only the superscripts 1-3 are reserved
    "C:\\Temp\\a.b.c",
]

#: Each hostile path, and the words of the rule it breaks that the message must carry.
BAD = {
    "C:..\\x": "not an absolute Windows path",
    "x.txt": "not an absolute Windows path",
    "NUL": "not an absolute Windows path",
    "\\Temp\\x.txt": "not an absolute Windows path",
    "C:relative.txt": "not an absolute Windows path",
    "/etc/passwd": "not an absolute Windows path",
    "\\\\server\\share\\x.txt": "UNC path",
    "//server/share/x.txt": "UNC path",
    "\\\\.\\C:\\x.txt": "device path",
    "\\\\?\\C:\\x.txt": "device path",
    "\\\\.\\PhysicalDrive0": "device path",
    "C:\\Temp\\x.txt:hidden": "alternate data stream",
    "C:\\Temp\\x.txt::$DATA": "alternate data stream",
    "C:\\Temp\\NUL": "reserved device name",
    "C:\\Temp\\nul.txt": "reserved device name",
    "C:\\CON\\x.txt": "reserved device name",
    "C:\\Temp\\Com1.log": "reserved device name",
    "C:\\Temp\\LPT9": "reserved device name",
    "C:\\Temp\\COM\u00b9.txt": "reserved device name",
    "C:\\Temp\\lpt\u00b3": "reserved device name",
    "C:\\Temp\\aux .txt": "reserved device name",
    "C:\\Temp\\..\\Windows\\x.dll": "'..'",
    "C:\\Temp\\.\\x.txt": "'..'",
    "C:\\Temp\\\\x.txt": "empty",
    "C:\\Temp\\x.txt\nC:\\Windows\\y": "control character",
    "C:\\Temp\\x\x00.txt": "control character",
    "C:\\Temp\\x.txt.": "dot or space",
    "C:\\Temp \\x.txt": "dot or space",
    "C:\\Temp/x.txt": "does not allow",
    "C:\\Temp\\x?.txt": "does not allow",
    "": "empty",
}


@pytest.mark.parametrize("path", GOOD)
def test_plain_drive_paths_are_guest_paths(path: str) -> None:
    assert guest_path_problem(path) is None


@pytest.mark.parametrize(("path", "rule"), BAD.items())
def test_each_rule_names_itself(path: str, rule: str) -> None:
    problem = guest_path_problem(path)
    assert problem is not None and rule in problem


def signed_with_destination(tmp: Path, key: PrivateKey, good: Path, destination: str) -> Path:
    """``good`` with its copy step's destination replaced in the manifest, signed again by ``key``:
    a validly signed bundle, as a careless (or hostile) signer could produce by hand."""

    def change(members: list[Member]) -> list[Member]:
        env = json.loads(members[0].data or b"")
        manifest = json.loads(base64.b64decode(env["payload"]))
        copy = next(s for s in manifest["steps"] if s["kind"] == "copy")
        copy["destination"] = destination
        payload = json.dumps(manifest).encode()
        signed = Envelope(payload_type=PAYLOAD_TYPE, payload=payload).with_signature(key)
        members[0] = regular("envelope.json", signed.to_json())
        return members

    return rewrite(good, tmp / "hostile.vmb", change)


@pytest.mark.parametrize(("destination", "rule"), [(p, r) for p, r in BAD.items() if p])
def test_verify_and_accept_refuse_what_the_host_refuses(
    tmp_path: Path, alice: PrivateKey, now: datetime, replay: ReplayStore, destination: str, rule: str
) -> None:
    good, _ = make_bundle(tmp_path, "good", [alice], now=now)
    path = signed_with_destination(tmp_path, alice, good, destination)
    policy = trusting(alice)
    where = "steps[0] ('copy-motd').destination"

    # What `run` and the agent do: acceptance refuses it, nothing extracted or recorded.
    workdir = tmp_path / "work"
    with pytest.raises(ManifestError) as caught:
        accept_bundle(path, policy=policy, replay=replay, workdir=workdir, now=now)
    assert where in caught.value.message and rule in caught.value.message
    assert replay.count() == 0

    # `bundle verify`: exit 4, one line naming the step and the rule, then the hint; no traceback.
    save_trust_policy(policy, trust_policy_path())
    result = CliRunner().invoke(cli, ["bundle", "verify", str(path)])
    assert result.exit_code == BUNDLE_REJECTED, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and where in lines[0] and rule in lines[0], lines
    assert "hint: use an absolute Windows path such as C:\\Temp\\file.txt" in lines[1]
    assert "Traceback" not in result.output


def test_build_refuses_a_bad_destination_before_writing_anything(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    toml = source / "bundle.toml"
    toml.write_text(
        toml.read_text().replace("C:\\\\ProgramData\\\\vmbusops\\\\motd.txt", "C:\\\\Temp\\\\NUL")
    )
    assert "C:\\\\Temp\\\\NUL" in toml.read_text()
    with pytest.raises(
        BundleSourceError, match=r"steps\[0\] \('copy-motd'\)\.destination .* reserved device name"
    ):
        build_bundle(source, tmp_path / "out.vmb")
    result = CliRunner().invoke(cli, ["bundle", "build", str(source), "-o", str(tmp_path / "o.vmb")])
    assert result.exit_code == USAGE, result.output
    assert "reserved device name" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o.vmb").exists()
