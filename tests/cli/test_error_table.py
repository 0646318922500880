"""Every bad input, for every command: one line that says what was wrong (and, on a second line,
``  hint:`` what to do), the exit code src/vmbusops/cli/exitcodes.py documents for it, nothing
on stdout, no traceback, no secret.

The table is the command line as an operator types it, run through the real click group with the
simulator as the host. ``{tmp}`` in an argument or a variable is the test's scratch folder, where
:func:`scene` wrote the files the cases name; ``{unwritable}`` is a directory this user cannot
create. Cases that need a process of their own (a reader that goes away, an agent) follow the table.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import Agent, agent_factory  # noqa: F401 - the fixture, for the agent tests
from tests.builders import PASSWORD, script
from tests.clirun import Ran, vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.cli import exitcodes

USAGE, HOST, BUNDLE = exitcodes.USAGE, exitcodes.HOST_FAILURE, exitcodes.BUNDLE_REJECTED
DEAD_AGENT = "http://127.0.0.1:1"  # nothing listens on port 1
TOKEN = "vmo_table-token-never-shown"  # a made-up token the output must never show
NOISE = ("Traceback", "Exception ignored", "ExceptionGroup", "BrokenPipeError", "Usage: ")


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    says: str
    env: Mapping[str, str] = field(default_factory=dict)
    never: str | None = None  # a wrong diagnosis this case once gave
    job: bool = False  # a finished job 1 exists first
    home_files: Mapping[str, str] = field(default_factory=dict)  # written under $VMBUSOPS_HOME first


def case(
    name: str, *args: str, code: int, says: str, env: Mapping[str, str] | None = None, never: str | None = None,
    job: bool = False, home_files: Mapping[str, str] | None = None,
) -> Any:
    return pytest.param(Case(args, code, says, env or {}, never, job, home_files or {}), id=name)


LAB = "VMBUSOPS_LAB"
HOME = "VMBUSOPS_HOME"
SIM_CLOSED = "closed its output"

CASES = [
    # The lab file: the simulator's own words, as a usage error, for every command that starts it.
    case("lab-bad-toml", "vms", env={LAB: "{tmp}/bad.toml"}, code=USAGE, says="is not valid TOML", never=SIM_CLOSED),
    case("lab-bad-state", "vms", env={LAB: "{tmp}/badstate.toml"}, code=USAGE,
         says="state must be one of Running, Off, Saved, Paused, not 'flying'", never=SIM_CLOSED),
    case("lab-unknown-key", "vms", env={LAB: "{tmp}/unknown.toml"}, code=USAGE, says="unknown key(s) bogus",
         never=SIM_CLOSED),
    case("lab-missing", "vms", env={LAB: "{tmp}/nosuch.toml"}, code=USAGE, says="cannot read lab file",
         never=SIM_CLOSED),
    case("lab-bad-exec", "exec", "--vm", "web01", "--credential", "lab-admin", "--", "hostname",
         env={LAB: "{tmp}/badstate.toml"}, code=USAGE, says="state must be one of", never=SIM_CLOSED),
    case("lab-bad-copy", "copy", "--vm", "web01", "{tmp}/motd.txt", "C:\\Temp\\motd.txt",
         env={LAB: "{tmp}/unknown.toml"}, code=USAGE, says="unknown key(s) bogus", never=SIM_CLOSED),
    case("lab-bad-run", "run", "{tmp}/job.vmb", env={LAB: "{tmp}/bad.toml"}, code=USAGE, says="is not valid TOML",
         never=SIM_CLOSED),
    case("lab-bad-agent", "agent", "--listen", "127.0.0.1:0", env={LAB: "{tmp}/badstate.toml"}, code=USAGE,
         says="state must be one of", never=SIM_CLOSED),
    # $VMBUSOPS_HOME: not a directory, under a file, a parent that does not exist, not writable.
    case("home-is-a-file", "vms", env={HOME: "{tmp}/afile"}, code=USAGE, says="cannot be used: it is not a directory"),
    case("home-under-a-file", "jobs", env={HOME: "{tmp}/afile/home"}, code=USAGE, says="cannot be used"),
    case("home-parent-missing", "vms", env={HOME: "/proc/vmbusops-nosuch/home"}, code=USAGE,
         says="VMBUSOPS_HOME=/proc/vmbusops-nosuch/home cannot be used"),
    case("home-unwritable", "cred", "list", env={HOME: "{unwritable}"}, code=USAGE, says="cannot be used"),
    case("home-unwritable-exec", "exec", "--vm", "web01", "--", "hostname", env={HOME: "{unwritable}"}, code=USAGE,
         says="cannot be used"),
    case("config-bad-toml", "vms", env={HOME: "{tmp}/badconfig"}, code=USAGE, says="config.toml"),
    # An agent that is not there, or no token for it.
    case("agent-dead-schedule", "schedule", "list", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-logs", "logs", "1", "--agent", DEAD_AGENT, code=HOST, says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-logs-follow", "logs", "1", "-f", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-submit", "submit", "{tmp}/job.vmb", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-jobs", "jobs", "--agent", DEAD_AGENT, code=HOST, says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-jobs-show", "jobs", "show", "1", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-jobs-cancel", "jobs", "cancel", "1", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-history", "history", "--vm", "web01", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-jobs-resume", "jobs", "resume", "1", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("agent-dead-schedule-remove", "schedule", "remove", "nightly", "--agent", DEAD_AGENT, code=HOST,
         says=f"cannot reach the agent at {DEAD_AGENT}"),
    case("resume-host-and-agent", "jobs", "resume", "1", "--host", "sim", "--agent", DEAD_AGENT, code=USAGE,
         says="--host and --agent do not go together"),
    case("schedule-remove-unknown", "schedule", "remove", "nosuch", code=USAGE, says="no schedule named 'nosuch'"),
    case("agent-no-token", "schedule", "list", "--agent", DEAD_AGENT, env={"VMBUSOPS_TOKEN": ""}, code=USAGE,
         says="no API token"),
    case("agent-token-file-missing", "logs", "1", "--agent", DEAD_AGENT, "--token-file", "{tmp}/nosuch", code=USAGE,
         says="cannot read the token file"),
    # An agent URL that is not one: bad input (2), not an agent that cannot be reached (3).
    case("agent-not-a-url", "jobs", "--agent", "notaurl", code=USAGE, says="--agent 'notaurl' is not an agent's URL"),
    case("agent-url-no-host", "submit", "{tmp}/job.vmb", "--agent", "http://", code=USAGE,
         says="--agent 'http://' is not an agent's URL"),
    case("agent-url-bad-scheme", "logs", "1", "--agent", "ftp://127.0.0.1:8421", code=USAGE,
         says="--agent 'ftp://127.0.0.1:8421' is not an agent's URL"),
    case("agent-env-not-a-url", "submit", "{tmp}/job.vmb", env={"VMBUSOPS_AGENT": "127.0.0.1:8421"}, code=USAGE,
         says="$VMBUSOPS_AGENT '127.0.0.1:8421' is not an agent's URL"),
    case("submit-missing-file", "submit", "{tmp}/nosuch.vmb", "--agent", DEAD_AGENT, code=USAGE, says="cannot read"),
    # A user and password in the agent's URL: httpx would send them in place of the token; never echoed.
    case("agent-url-password", "logs", "1", "--agent", f"http://admin:{TOKEN}@127.0.0.1:1", code=USAGE,
         says="--agent 'http://admin:***@127.0.0.1:1' carries a user name or password"),
    case("agent-env-url-password", "submit", "{tmp}/job.vmb", env={"VMBUSOPS_AGENT": f"https://admin:{TOKEN}@127.0.0.1:1"}, code=USAGE,
         says="$VMBUSOPS_AGENT 'https://admin:***@127.0.0.1:1' carries a user name or password"),
    # The host: a name nothing can open is named as such, not blamed on the credential.
    case("host-bogus-exec", "exec", "--host", "bogus", "--vm", "web01", "--credential", "lab-admin", "--", "hostname",
         code=USAGE, says="unknown host 'bogus'", never="credential"),
    case("host-bogus-env", "exec", "--vm", "web01", "--", "hostname", env={"VMBUSOPS_HOST": "bogus"}, code=USAGE,
         says="unknown host 'bogus'", never="credential"),
    case("host-bogus-vms", "vms", "--host", "bogus", code=USAGE, says="unknown host 'bogus'"),
    case("host-bogus-run", "run", "--host", "bogus", "{tmp}/job.vmb", code=USAGE, says="unknown host 'bogus'",
         never="credential"),
    case("host-winrm-no-credential", "vms", "--host", "winrm://127.0.0.1:1", code=USAGE,
         says="winrm://127.0.0.1:1 needs a credential", never="cred set winrm://"),
    case("host-ssh-dead", "vms", "--host", "ssh://vmbusops@127.0.0.1:1", code=HOST, says="cannot reach"),
    # Jobs: one that does not exist, or is not in a state that allows what was asked, is a usage error.
    case("jobs-show-missing", "jobs", "show", "999", code=USAGE, says="no job 999"),
    case("logs-missing", "logs", "999", code=USAGE, says="no job 999"),
    case("logs-follow-missing", "logs", "999", "-f", code=USAGE, says="no job 999"),
    case("jobs-resume-missing", "jobs", "resume", "999", code=USAGE, says="no job 999"),
    case("jobs-cancel-missing", "jobs", "cancel", "999", code=USAGE, says="no job 999"),
    case("jobs-resume-finished", "jobs", "resume", "1", code=USAGE, says="only an interrupted job can be resumed",
         job=True),
    case("logs-vm-not-in-job", "logs", "1", "--vm", "nosuch", code=USAGE, says="no run on nosuch in job 1", job=True),
    case("jobs-show-not-a-number", "jobs", "show", "abc", code=USAGE, says="'abc' is not a valid integer"),
    case("jobs-show-huge-id", "jobs", "show", "99999999999999999999999", code=USAGE, says="is not in the range"),
    case("logs-huge-id", "logs", "99999999999999999999999", code=USAGE, says="is not in the range"),
    case("logs-bad-stream", "logs", "1", "--stream", "bogus", code=USAGE, says="'bogus' is not one of"),
    # Listings and history: filters that cannot be understood.
    case("jobs-bad-state", "jobs", "--state", "bogus", code=USAGE, says="is not a state"),
    case("jobs-bad-since", "jobs", "--since", "yesterday-ish", code=USAGE, says="is not a time"),
    case("history-no-vm", "history", code=USAGE, says="Missing option '--vm'"),
    case("history-bad-since", "history", "--vm", "web01", "--since", "99x", code=USAGE, says="is not a time"),
    case("history-bad-state", "history", "--vm", "web01", "--state", "done", code=USAGE, says="is not a state"),
    case("reference-bad-option", "reference", "--bogus", code=USAGE, says="No such option '--bogus'"),
    # exec: which guests.
    case("exec-no-guests", "exec", "--", "hostname", code=USAGE, says="name the guests"),
    case("exec-all-and-vm", "exec", "--all", "--vm", "web01", "--", "hostname", code=USAGE,
         says="--all and --vm cannot be used together"),
    case("exec-vm-missing", "exec", "--vm", "nosuch", "--", "hostname", code=USAGE, says="no VM of the host matches 'nosuch'"),
    case("exec-glob-matches-nothing", "exec", "--vm", "zz*", "--", "hostname", code=USAGE,
         says="no VM of the host matches 'zz*'"),
    case("exec-no-credential", "exec", "--vm", "web01", "--credential", "nosuch", "--", "hostname", code=USAGE,
         says="no credential named 'nosuch'"),
    case("exec-no-script", "exec", "--vm", "web01", code=USAGE, says="Missing argument 'SCRIPT...'"),
    case("exec-bad-timeout", "exec", "--vm", "web01", "--timeout", "0", "--", "hostname", code=USAGE, says="--timeout"),
    case("exec-bad-concurrency", "exec", "--vm", "web01", "--max-concurrency", "0", "--", "x", code=USAGE,
         says="--max-concurrency"),
    case("exec-unknown-option", "exec", "--vms", "web01", "--", "hostname", code=USAGE, says="No such option"),
    # copy
    case("copy-missing-source", "copy", "--vm", "web01", "{tmp}/nosuch.txt", "C:\\Temp\\x.txt", code=USAGE,
         says="does not exist"),
    case("copy-relative-destination", "copy", "--vm", "web01", "{tmp}/motd.txt", "Temp\\x.txt", code=USAGE,
         says="is not an absolute Windows path"),
    case("copy-vm-missing", "copy", "--vm", "nosuch", "{tmp}/motd.txt", "C:\\Temp\\x.txt", code=USAGE,
         says="no VM of the host matches 'nosuch'"),
    case("copy-a-device", "copy", "--vm", "web01", "/dev/zero", "C:\\Temp\\x.txt", code=USAGE,
         says="/dev/zero is not a regular file"),
    case("copy-a-fifo", "copy", "--vm", "web01", "{tmp}/fifo", "C:\\Temp\\x.txt", code=USAGE,
         says="fifo is not a regular file"),
    # bundles, keys and trust
    case("run-missing-bundle", "run", "{tmp}/nosuch.vmb", code=USAGE, says="no bundle file"),
    case("run-garbage-bundle", "run", "{tmp}/garbage.vmb", code=BUNDLE, says="too short to be a tar archive"),
    case("inspect-garbage-bundle", "bundle", "inspect", "{tmp}/garbage.vmb", code=BUNDLE, says="too short"),
    case("verify-garbage-bundle", "bundle", "verify", "{tmp}/garbage.vmb", code=BUNDLE, says="too short"),
    case("trust-add-not-a-key", "trust", "add", "{tmp}/motd.txt", code=USAGE, says="is not a PEM public key"),
    case("trust-add-missing-key", "trust", "add", "{tmp}/nosuch.pub", code=USAGE, says="does not exist"),
    case("trust-add-bad-steps", "trust", "add", "{tmp}/motd.txt", "--steps", "bogus", code=USAGE,
         says="known step kinds are"),
    case("keys-new-bad-name", "keys", "new", "../x", code=USAGE, says="key name '../x' must be"),
    case("init-folder-not-empty", "bundle", "init", "{tmp}/badconfig", code=USAGE,
         says="badconfig is not empty and does not hold the example unchanged"),
    case("build-missing-source", "bundle", "build", "{tmp}/nosuch", "-o", "{tmp}/x.vmb", code=USAGE,
         says="does not exist"),
    case("sign-missing-key", "bundle", "sign", "{tmp}/job.vmb", "--key", "nosuch", code=USAGE,
         says="cannot read private key"),
    case("trust-remove-unknown", "trust", "remove", "nosuch", code=USAGE, says="nosuch"),
    # state under $VMBUSOPS_HOME that cannot be read: named, never a traceback
    case("trust-policy-corrupt", "trust", "list", home_files={"trust.toml": "garbage"}, code=USAGE,
         says="is not valid TOML"),
    case("credentials-corrupt", "cred", "list", home_files={"credentials.json": "{bad"}, code=USAGE,
         says="cannot be read"),
    case("journal-corrupt", "jobs", home_files={"journal/journal.sqlite": "garbage" * 200}, code=HOST,
         says="file is not a database"),
    case("jobs-limit-negative", "jobs", "--limit", "-1", code=USAGE, says="--limit"),
    # agent administration
    case("agent-listen-not-host-port", "agent", "--listen", "bogus", code=USAGE, says="cannot listen on 'bogus'"),
    case("agent-listen-unresolvable", "agent", "--listen", "nosuch.invalid:8421", code=USAGE,
         says="cannot listen on nosuch.invalid:8421"),
    case("agent-bad-max-sessions", "agent", "--max-sessions", "0", code=USAGE, says="--max-sessions"),
    case("agent-ready-file-no-dir", "agent", "--ready-file", "{tmp}/nosuch/ready.json", "--listen", "127.0.0.1:0",
         code=USAGE, says="/nosuch' does not exist"),
    case("token-bad-duration", "agent", "token", "create", "--name", "x", "--expires-in", "soon", code=USAGE,
         says="bad duration 'soon'"),
    case("token-revoke-missing", "agent", "token", "revoke", "nosuch", code=USAGE, says="no token or certificate"),
    case("token-name-control", "agent", "token", "create", "--name", "\x1b[31mred", "--scope", "read", "--vm", "*",
         code=USAGE, says=r"'\x1b[31mred' or a glob holds a control or bidirectional formatting character"),
    case("token-vm-bidi", "agent", "token", "create", "--name", "x", "--scope", "read", "--vm", "web\u202e*",
         code=USAGE, says="holds a control or bidirectional formatting character"),
    # the rest
    case("dsc-missing-transcript", "dsc", "parse-lcm", "{tmp}/nosuch.txt", code=USAGE, says="No such file"),
    case("unknown-command", "nosuch", code=USAGE, says="No such command 'nosuch'"),
    case("unknown-option", "--bogus", code=USAGE, says="No such option"),
    case("prune-unknown-option", "prune", "--bogus", code=USAGE, says="No such option"),
    case("cred-remove-missing", "cred", "remove", "nosuch", code=USAGE, says="nosuch"),
    # the fleet's controller
    case("fleet-no-url", "fleet", "serve", code=USAGE, says="no NATS URL"),
    case("fleet-bad-url", "fleet", "serve", "--nats", "http://x:4222", code=USAGE, says="bad --nats URL"),
    # a URL's password is never echoed back, and the hint names fleet serve's own options
    case("fleet-url-password-bad-port", "fleet", "serve", "--nats", f"nats://bob:{TOKEN}@127.0.0.1:abc", code=USAGE,
         says="bad --nats URL 'nats://bob:***@127.0.0.1:abc'"),
    case("fleet-url-password", "fleet", "serve", "--nats", f"nats://bob:{TOKEN}@127.0.0.1:4222", code=USAGE,
         says="the --nats URL carries a password"),
    case("agent-url-password-bad-port", "agent", "--fleet", f"tls://bob:{TOKEN}@127.0.0.1:99999", code=USAGE,
         says="bad --fleet URL 'tls://bob:***@127.0.0.1:99999'"),
    case("fleet-missing-ca", "fleet", "serve", "--nats", "tls://127.0.0.1:1", "--nats-ca", "{tmp}/nosuch-ca.pem",
         "--listen", "127.0.0.1:0", code=USAGE, says="cannot load the TLS files for tls://127.0.0.1:1"),
    case("fleet-password-no-user", "fleet", "serve", "--nats", "nats://127.0.0.1:1", code=USAGE,
         env={"VMBUSOPS_NATS_PASSWORD": TOKEN}, says="a NATS password without a user"),
    case("fleet-no-broker", "fleet", "serve", "--nats", "nats://127.0.0.1:1", "--listen", "127.0.0.1:0", code=HOST,
         says="no server could be reached"),
    # the simulated fleet
    case("lab-migrate-unknown-host", "lab", "migrate", "web01", "--to", "HV-X", code=USAGE,
         says="The cluster node was not found."),
    case("lab-migrate-unknown-vm", "lab", "migrate", "nosuch", "--to", "HV-CLIENT", code=USAGE,
         says='unable to find a virtual machine with name "nosuch"'),
    case("lab-fail-unknown-host", "lab", "fail-host", "HV-X", code=USAGE, says="'HV-X' is not a host of the lab"),
    case("lab-bad-lab", "lab", "status", env={LAB: "{tmp}/bad.toml"}, code=USAGE, says="is not valid TOML"),
    case("sim-host-not-in-lab", "vms", "--host", "sim:HV-X", code=USAGE, says="has no host named 'HV-X'"),
    # receipts
    case("receipt-no-journal", "receipt", "show", "1", code=USAGE, says="there is no journal here yet"),
    case("receipt-no-such-job", "receipt", "show", "7", job=True, code=USAGE, says="no job 7"),
    case("receipt-no-such-run", "receipt", "export", "1", "--vm", "nosuch", job=True, code=USAGE,
         says="job 1 has no run on nosuch"),
    case("receipt-verify-missing", "receipt", "verify", "{tmp}/nosuch.json", "--host-key", "{tmp}/motd.txt",
         code=USAGE, says="is not a PEM public key"),
    case("receipt-verify-not-a-receipt", "receipt", "verify", "{tmp}/garbage.vmb", "--host-key", "{tmp}/host.pub",
         code=BUNDLE, says="the receipt is not valid JSON"),
    case("receipt-agent-down", "receipt", "transcript", "1", "--vm", "web01", "--agent", DEAD_AGENT, code=HOST,
         says="cannot reach the agent"),
]  # fmt: skip


@dataclass
class Scene:
    tmp: Path
    unwritable: str
    secrets: list[str]

    def fill(self, text: str) -> str:
        return text.replace("{tmp}", str(self.tmp)).replace("{unwritable}", self.unwritable)


@pytest.fixture
def scene(tmp_path: Path, make_lab: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    lab = make_lab()
    monkeypatch.setenv("VMBUSOPS_TOKEN", TOKEN)
    (tmp_path / "bad.toml").write_text("x = [\n")
    (tmp_path / "badstate.toml").write_text('[[vm]]\nname = "a"\nstate = "flying"\n')
    (tmp_path / "unknown.toml").write_text("bogus = 1\n")
    (tmp_path / "afile").write_text("")
    (tmp_path / "motd.txt").write_text("hello\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "garbage.vmb").write_bytes(b"\x00not a bundle" * 8)
    (tmp_path / "host.pub").write_bytes(PrivateKey.generate().public_key().to_pem())
    (tmp_path / "badconfig").mkdir()
    (tmp_path / "badconfig" / "config.toml").write_text("[host\n")
    key = PrivateKey.generate()
    trust_and_credential(key)
    job = signed_bundle(tmp_path, key, vms=["web01"], steps=[script("s", "Write-Output hi")])
    job.rename(tmp_path / "job.vmb")
    if os.geteuid() == 0:  # root may write anywhere a mode allows; sysfs refuses new folders even to root
        unwritable = "/sys/vmbusops-unwritable/home"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        unwritable = str(tmp_path / "ro" / "home")
    secrets = [PASSWORD, TOKEN, *(lab.lab.credential(vm.name)[1] for vm in lab.lab.vms)]
    yield Scene(tmp_path, unwritable, secrets)
    if (tmp_path / "ro").exists():
        (tmp_path / "ro").chmod(0o700)


def assert_one_line(ran: Ran, *, code: int, says: str, secrets: list[str], never: str | None = None) -> None:
    shown = f"exit {ran.returncode}\nstdout: {ran.stdout!r}\nstderr: {ran.stderr!r}"
    assert ran.returncode == code, shown
    assert ran.stdout == "", shown
    lines = ran.stderr.splitlines()
    assert 1 <= len(lines) <= 2, shown
    assert lines[0].startswith("vmbusops: ") and says in lines[0], shown
    if len(lines) == 2:
        assert lines[1].startswith("  hint: "), shown
    assert not any(noise in ran.stderr for noise in NOISE), shown
    if never is not None:
        assert never not in ran.stderr, shown
    for secret in secrets:
        assert secret not in ran.stdout + ran.stderr


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_with_its_documented_exit_code(case: Case, scene: Scene) -> None:
    if case.job:
        ran = vmbusops("run", str(scene.tmp / "job.vmb"))
        assert ran.returncode in (0, 1), ran  # finished, whatever its outcome
    for name, text in case.home_files.items():
        (Path(os.environ["VMBUSOPS_HOME"]) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(os.environ["VMBUSOPS_HOME"]) / name).write_text(text)
    env = {name: scene.fill(value) for name, value in case.env.items()}
    args = [scene.fill(a) for a in case.args]
    ran = vmbusops(*args, env=env)
    assert_one_line(ran, code=case.code, says=case.says, secrets=scene.secrets, never=case.never)


def test_every_command_is_in_the_table() -> None:
    from vmbusops.cli.main import COMMANDS

    named = {p.values[0].args[0] for p in CASES}  # type: ignore[attr-defined]
    named |= {"hosts", "demo"}  # hosts: tests/remote/test_hosts_cli.py; demo takes no input to get wrong
    assert set(COMMANDS) <= named, sorted(set(COMMANDS) - named)


# --- what the table's one-liners replaced -------------------------------------------------------


def test_exec_takes_globs_as_bundles_do(make_lab: Callable[..., Any]) -> None:
    make_lab()
    ran = vmbusops("exec", "--vm", "WEB0?", "--vm", "web01", "--json", "--", "hostname")
    assert ran.returncode == 0, ran.stderr
    results = [json.loads(line) for line in ran.stdout.splitlines() if '"result"' in line]
    assert [r["vm"] for r in results] == ["web01", "web02"]  # the host's spelling, each VM once


def test_trust_add_takes_vm_like_every_command_and_still_vms(tmp_path: Path) -> None:
    assert vmbusops("keys", "new", "alice").returncode == 0
    pub = str(Path(os.environ["VMBUSOPS_HOME"]) / "keys" / "alice.pub")
    added = vmbusops("trust", "add", pub, "--vm", "web*", "--vms", "db01", "--credential", "lab-admin")
    assert added.returncode == 0, added.stderr
    listed = vmbusops("trust", "list").stdout
    assert "web*" in listed and "db01" in listed
    assert "--vms" not in vmbusops("trust", "add", "--help").stdout


@pytest.mark.parametrize("command", [["run"], ["exec"], ["copy"], ["vms"], ["submit"], ["logs"], ["jobs", "resume"]])
def test_help_lists_every_exit_code(command: list[str]) -> None:
    shown = vmbusops(*command, "--help").stdout
    for code in (0, 1, 2, 3, 4, 130):
        assert f"\n    {code} " in shown, (code, shown)


def test_host_help_names_every_kind_of_host() -> None:
    shown = " ".join(vmbusops("vms", "--help").stdout.split())
    for kind in ("sim", "local", "pwsh-lab", "ssh://", "winrm://", "[hosts.NAME]"):
        assert kind in shown, kind


# --- readers that go away, agents ---------------------------------------------------------------


def _head_one(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``vmbusops ARGS | head -1``: read one line, leave; the exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=120)
    assert first, stderr
    return code, stderr


def test_a_reader_that_leaves_a_local_listing_gets_no_noise(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    make_lab()
    key = PrivateKey.generate()
    trust_and_credential(key)
    loud = script("loud", '1..4000 | ForEach-Object { "line $_" }')
    assert vmbusops("run", str(signed_bundle(tmp_path, key, vms=["web01", "web02"], steps=[loud]))).returncode in (0, 1)
    for args in (["logs", "1"], ["logs", "1", "--json"], ["logs", "1", "-f"], ["jobs", "show", "1", "--json"]):
        code, stderr = _head_one(*args)
        assert code in (0, 141), (args, code, stderr)  # 141: the reader left before the end
        assert stderr == "", (args, stderr)


def test_following_an_agent_into_a_reader_that_leaves_is_quiet(agent_factory: Callable[..., Agent]) -> None:  # noqa: F811
    agent = agent_factory()
    # Quiet at first, so the follower's first line comes live over SSE, not from the catch-up.
    loud = script("loud", 'Start-Sleep -Seconds 3; 1..3000 | ForEach-Object { "line $_" }; Start-Sleep -Seconds 1; "done"')
    env = {"VMBUSOPS_HOME": str(agent.home), "VMBUSOPS_TOKEN": agent.tokens["admin"]}
    submitted = subprocess.run(
        [sys.executable, "-m", "vmbusops", "submit", str(agent.bundle(["a-web01", "a-web02"], [loud])),
         "--agent", agent.url],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    for args in (["logs", job_id, "-f"], ["logs", job_id, "-f", "--json"], ["logs", job_id]):
        code, stderr = _head_one(*args, "--agent", agent.url, env=env)
        assert code in (0, 141), (args, code, stderr)
        assert stderr == "", (args, stderr)
        assert agent.tokens["admin"] not in stderr


def following_a_slow_job(agent: Agent) -> tuple[subprocess.Popen[str], str]:
    """A job on ``agent`` that prints "first" and then waits a minute, and a ``logs -f --agent``
    process following it that has printed "first"; (the follower, the job's id)."""
    slow = script("slow", '"first"; Start-Sleep -Seconds 60; "never"')
    env = {**os.environ, "VMBUSOPS_HOME": str(agent.home), "VMBUSOPS_TOKEN": agent.tokens["admin"], "NO_COLOR": "1"}
    submitted = subprocess.run(
        [sys.executable, "-m", "vmbusops", "submit", str(agent.bundle(["a-web01"], [slow])), "--agent", agent.url],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    follower = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "logs", job_id, "-f", "--agent", agent.url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert follower.stdout is not None and follower.stderr is not None
    while "first" not in (line := follower.stdout.readline()):
        if not line:
            follower.wait()
            raise AssertionError(follower.stderr.read())
    return follower, job_id


def test_ctrl_c_on_a_follower_of_an_agent_says_the_job_goes_on(agent_factory: Callable[..., Agent]) -> None:  # noqa: F811
    agent = agent_factory()
    follower, job_id = following_a_slow_job(agent)
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=60)
    assert follower.returncode == 130, err
    assert "nothing was stopped at the agent, its jobs go on" in err and "stopping guest pipelines" not in err
    assert agent.tokens["admin"] not in err
    job = httpx.get(f"{agent.url}/v1/jobs/{job_id}", headers=agent.headers(), timeout=30).json()["job"]
    assert job["state"] == "in-progress"


def test_a_follower_whose_agent_dies_says_it_is_trying_again(agent_factory: Callable[..., Agent]) -> None:  # noqa: F811
    """Not 90 s of silence before the one-line error: the follower says at once that it lost the
    agent and for how long it will try again."""
    agent = agent_factory()
    follower, _ = following_a_slow_job(agent)
    try:
        agent.process.kill()
        agent.process.wait()
        assert follower.stderr is not None
        said = follower.stderr.readline()
        assert said == f"vmbusops: lost the connection to the agent at {agent.url}; trying again for up to 90 s\n"
        assert follower.poll() is None  # still trying
    finally:
        follower.kill()
        follower.communicate()


def test_an_agent_that_stopped_is_one_line(agent_factory: Callable[..., Agent]) -> None:  # noqa: F811
    agent = agent_factory()
    url = agent.url
    assert agent.stop() == 0
    env = {"VMBUSOPS_HOME": str(agent.home), "VMBUSOPS_TOKEN": agent.tokens["admin"]}
    for args in (["schedule", "list"], ["logs", "1"]):
        ran = subprocess.run(
            [sys.executable, "-m", "vmbusops", *args, "--agent", url],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False,
        )  # fmt: skip
        assert_one_line(
            Ran(ran.returncode, ran.stdout, ran.stderr), code=HOST, says=f"cannot reach the agent at {url}",
            secrets=[agent.tokens["admin"]],
        )


class _NotAnAgent(http.server.BaseHTTPRequestHandler):
    """What may answer at a mistyped --agent: a web server's HTML page, or a JSON problem whose
    text is hostile (control characters, a second line)."""

    def do_GET(self) -> None:
        if self.path.startswith("/hostile"):
            body = json.dumps({"detail": "no job \x1b]0;PWNED\x07\x1b[2J\x1b[31mred\nsecond line"}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/problem+json")
        else:
            body = b"<!DOCTYPE HTML>\n<html><body>\n<h1>Not Found</h1>\n</body></html>\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_an_agent() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAnAgent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_what_answers_at_a_wrong_agent_url_is_said_in_one_line(scene: Scene, not_an_agent: str) -> None:
    """A web server's page is not printed (it is not the agent's), a problem's text reaches the
    terminal as one line with its controls escaped, and https:// to a plain-HTTP server says why."""
    ran = vmbusops("logs", "1", "--agent", f"http://{not_an_agent}")
    assert_one_line(ran, code=HOST, says="answered HTTP 404 (text/html), not as a vmbusops agent answers",
                    secrets=scene.secrets, never="<html>")  # fmt: skip
    ran = vmbusops("jobs", "show", "1", "--agent", f"http://{not_an_agent}/hostile")
    assert_one_line(ran, code=USAGE, says=r"no job \x1b]0;PWNED\x07\x1b[2J\x1b[31mred second line",
                    secrets=scene.secrets)  # fmt: skip
    assert "\x1b" not in ran.stderr and "\x07" not in ran.stderr
    ran = vmbusops("logs", "1", "--agent", f"https://{not_an_agent}")
    assert_one_line(ran, code=HOST, says=f"cannot reach the agent at https://{not_an_agent}: ", secrets=scene.secrets)
    assert not ran.stderr.splitlines()[0].endswith(": "), ran.stderr
    assert "use http://" in ran.stderr
