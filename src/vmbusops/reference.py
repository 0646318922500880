"""The reference for ``config.toml``, the lab file and the environment, made from the code.

``vmbusops reference`` prints it (Markdown); ``docs/reference.md`` is that output, and a test fails
when the two differ. Nothing in it is written twice:

* the keys of each table are the ones its parser accepts (``config._KNOWN``,
  ``inventory.HOST_KEYS``, the lab's ``TOP_KEYS``/``HOST_KEYS``/``VM_KEYS``/``FAULT_KEYS``/
  ``GENERATE_KEYS``): every other key is an error there, so these are all there are;
* each default is the one the dataclass the parser fills holds (``Config``, ``AgentConfig``,
  ``HostEntry``, ``HostConfig``, ``VMSpec``...);
* each meaning is the comment beside the key in the annotated example of the parser's module
  docstring (:mod:`vmbusops.config`, :mod:`vmbusops.inventory`, :mod:`vmbusops.sim.lab`).

:func:`render` refuses (:class:`ReferenceError`) a key the parser accepts that its docstring does
not explain, and one the docstring explains that the parser does not accept. Environment
variables are described in :data:`ENVIRONMENT`; a test finds every ``VMBUSOPS_*`` name in the
shipped code and requires each to be described there.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Every environment variable vmbusops (or its scripts) reads: name -> (who reads it, meaning).
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "VMBUSOPS_HOME": ("every command", "the folder holding all state (config.toml, credentials, keys, trust "
                      "policy, journal, simulator state); default: the platform's per-user data folder"),
    "VMBUSOPS_HOST": ("host commands, run, agent", "the host when --host is not given: sim, sim:HOST, local, pwsh, "
                      "pwsh-lab, ssh://..., winrm://... or a [hosts.NAME]; overrides [host] default"),
    "VMBUSOPS_LAB": ("the simulator, pwsh-lab", "the lab file (TOML, below); overrides [sim] lab; default: "
                     "the built-in lab"),
    "VMBUSOPS_KEY_PASSPHRASE": ("keys new, bundle sign", "the signing key's passphrase (else piped stdin, "
                                "else a prompt without echo)"),
    "VMBUSOPS_CREDENTIAL_PASSPHRASE": ("cred, every command that uses a credential",
                                       "seal the credential store with this passphrase (scrypt) instead of a "
                                       "key file; never stored"),
    "CREDENTIALS_DIRECTORY": ("cred, every command that uses a credential",
                              "set by systemd (LoadCredential=): vmbusops-credentials.key there is the "
                              "sealing key when [credentials] key_file is not set"),
    "VMBUSOPS_AGENT": ("submit; the runbook module",
                       "the agent's URL (default http://127.0.0.1:8421)"),
    "VMBUSOPS_TOKEN": ("submit and every command's --agent; the runbook module",
                       "the agent API token (else --token-file / -Token)"),
    "VMBUSOPS_PWSH": ("--host pwsh, --host pwsh-lab, ./scripts/test", "the PowerShell 7 to run (else pwsh "
                      "on PATH, else ../shared/pwsh/pwsh beside the checkout)"),
    "VMBUSOPS_NATS_PASSWORD": ("agent --fleet, fleet serve", "the fleet's NATS password for --fleet-user or "
                               "--nats-user (else [fleet] password_file or the --...-password-file; never a flag)"),
    "VMBUSOPS_NATS": ("./scripts/test, the tests", "required: a fleet test fails, rather than skips, without a "
                      "nats-server; set by ./scripts/test"),
    "VMBUSOPS_SIM_STATE": ("the simulator, vmbusops lab", "the simulator's state folder (default "
                           "$VMBUSOPS_HOME/sim): the agents of a simulated fleet, each with its own home, "
                           "share one lab's state through it"),
    "VMBUSOPS_SIM_LOG": ("the simulator (python -m vmbusops.sim)", "a file for its diagnostics (it writes "
                         "nothing to stderr: stdout carries the protocol)"),
    "VMBUSOPS_PWSHLAB_PYTHON": ("pwsh-lab (set by vmbusops, not by you)",
                                "the interpreter the lab's PowerShell functions run labctl with"),
    "VMBUSOPS_PWSHLAB_STATE": ("pwsh-lab (set by vmbusops, not by you)", "the simulator state folder the lab uses"),
    "VMBUSOPS_PWSHLAB_LAB": ("pwsh-lab (set by vmbusops, not by you)", "the lab file the lab uses"),
    "NO_COLOR": ("every command", "set (to anything): no colour even on a terminal"),
    "_VMBUSOPS_COMPLETE": ("vmbusops (click)", "bash_source, zsh_source or fish_source: print the shell "
                           "completion script instead of running (see Shell completion)"),
    "PYTHON": ("./scripts/*, ./vmbusops", "the Python 3.11+ that creates .venv (default python3)"),
    "VMBUSOPS_BROWSER": ("./scripts/test, the web console's browser tests", "required (set by ./scripts/test "
                         "once it installed Chromium): a missing browser fails those tests instead of skipping them"),
    "VMBUSOPS_TEST_WORKERS": ("./scripts/test", "pytest-xdist workers (default one more than the cores; 0: one process)"),
    "VMBUSOPS_PEER_PYTHON": ("./scripts/test, the tests", "the interpreter of .venv-peer (the independent "
                             "PSRP client); set by ./scripts/test"),
    "VMBUSOPS_PYTHON": ("the Pester tests", "the Python that has vmbusops installed; set by ./scripts/test"),
}  # fmt: skip


class ReferenceError(Exception):
    """The code and its documentation disagree (a key without a meaning, a meaning without a key)."""


@dataclass
class Entry:
    table: str
    key: str
    example: str
    meaning: str


@dataclass
class Example:
    """An annotated TOML example from a docstring: its keys per table, and notes on the tables."""

    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


_HEADER = re.compile(r"\[\[?([A-Za-z0-9_.]+)\]\]?")
_COMMENT = re.compile(r"^(.*?)(?:\s+#\s?(.*))?$")


def annotated_example(doc: str, *, rename: Iterable[tuple[str, str]] = ()) -> Example:
    """The ``::`` block of a docstring read as annotated TOML: ``key = value  # meaning`` lines, a
    comment-only line continuing the meaning above it, ``[table]`` headers (``[a.b]`` documents
    key ``b`` of table ``a``). ``rename`` maps a table name pattern to its name here
    (``hosts.hv01`` -> ``hosts.NAME``)."""
    block = doc.split("::", 1)[1] if "::" in doc else ""
    out = Example()
    table = ""
    last: Entry | None = None
    for raw in block.splitlines():
        if raw and not raw.startswith(" "):
            break  # the block ends at the first unindented line
        text = raw.strip()
        if not text:
            continue
        if text.startswith("#"):
            if last is not None:
                last.meaning = f"{last.meaning} {text.lstrip('#').strip()}".strip()
            continue
        match = _COMMENT.match(text)
        assert match is not None
        body, comment = match.group(1).strip(), (match.group(2) or "").strip()
        header = _HEADER.fullmatch(body)
        if header:
            table = header.group(1)
            for pattern, name in rename:
                table = re.sub(pattern, name, table)
            last = None
            if "." in table and not table.startswith("hosts."):
                parent, key = table.rsplit(".", 1)
                last = out.entries.setdefault((parent, key), Entry(parent, key, "(a table)", comment))
            elif comment:
                out.notes[table] = comment
            continue
        key, _, value = body.partition("=")
        key = key.strip()
        entry = out.entries.get((table, key))
        if entry is None:
            entry = out.entries[(table, key)] = Entry(table, key, value.strip(), comment)
        elif comment and not entry.meaning:
            entry.meaning = comment
        last = entry
    return out


def _default_of(obj: Any, name: str) -> Any:
    """The default of a dataclass field (of a class or an instance); ``...`` when it has none."""
    for f in dataclasses.fields(obj):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return ...
    return ...


def _toml(value: Any) -> str:
    if value is ...:
        return "(derived)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[]" if not value else json.dumps(list(value))
    if dataclasses.is_dataclass(value):
        return "(a table)"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass(frozen=True)
class Table:
    """One TOML table of a file: its name in the reference, the keys its parser accepts, where its
    defaults come from, and keys whose meaning lives in another table's example."""

    name: str
    keys: frozenset[str]
    defaults: Any = None
    default_names: tuple[tuple[str, str], ...] = ()
    required: frozenset[str] = frozenset()


def _table_section(table: Table, example: Example, title: str) -> list[str]:
    documented = {key for (t, key) in example.entries if t == table.name}
    missing = sorted(table.keys - documented)
    if missing:
        raise ReferenceError(f"[{table.name}] accepts {', '.join(missing)}, which its docstring does not explain")
    stale = sorted(documented - table.keys)
    if stale:
        raise ReferenceError(f"[{table.name}]: the docstring explains {', '.join(stale)}, which the parser refuses")
    lines = [f"### {title}", ""]
    note = example.notes.get(table.name)
    if note:
        lines += [f"{title}: {note}.", ""]
    lines += ["| key | default | example | meaning |", "|---|---|---|---|"]
    rename = dict(table.default_names)
    for key in sorted(table.keys):
        entry = example.entries[(table.name, key)]
        if not entry.meaning:
            raise ReferenceError(f"[{table.name}] {key}: the docstring's example gives it no meaning")
        if key in table.required:
            shown = "(required)"
        elif entry.example == "(a table)":
            shown = "(empty)"
        elif table.defaults is None:
            shown = "(see meaning)"
        else:
            shown = _toml(_default_of(table.defaults, rename.get(key, key)))
        lines.append(f"| `{key}` | `{_cell(shown)}` | `{_cell(entry.example)}` | {_cell(entry.meaning)} |")
    return [*lines, ""]


def config_section() -> list[str]:
    from vmbusops import config, inventory
    from vmbusops.fleet.agent_config import FleetConfig

    example = annotated_example(config.__doc__ or "")
    hosts = annotated_example(inventory.__doc__ or "", rename=[(r"^hosts\.[^.]+$", "hosts.NAME")])
    known = config._KNOWN
    tables = [
        Table("host", frozenset(known["host"]), config.Config, (("default", "host"),)),
        Table("sim", frozenset(known["sim"]), config.Config),
        Table("agent", frozenset(known["agent"]), config.AgentConfig),
        Table("retention", frozenset(known["retention"]), config.RetentionConfig),
        Table("credentials", frozenset(known["credentials"]), config.Config, (("key_file", "credential_key_file"),)),
        Table("fleet", frozenset(known["fleet"]), FleetConfig),
    ]
    extra = sorted(set(known) - {t.name for t in tables})
    if extra:
        raise ReferenceError(f"config.toml has sections the reference does not know: {', '.join(extra)}")
    lines = [
        "## config.toml",
        "",
        "`$VMBUSOPS_HOME/config.toml`. Every key is optional; an unknown section or key is an error.",
        "",
    ]
    for table in tables:
        lines += _table_section(table, example, f"`[{table.name}]`")
    lines += _table_section(
        Table("hosts.NAME", frozenset(inventory.HOST_KEYS), inventory.HostEntry, required=frozenset({"transport"})),
        hosts,
        "`[hosts.NAME]`: remote hosts",
    )
    return lines


def lab_section() -> list[str]:
    from vmbusops.sim import lab, lab_groups

    example = annotated_example(lab.__doc__ or "")
    documented_top = {t for (t, _) in example.entries} | set(example.notes)
    missing = sorted(lab.TOP_KEYS - documented_top)
    if missing:
        raise ReferenceError(f"the lab file accepts [{', '.join(missing)}], which its docstring does not explain")
    lines = [
        "## The lab file",
        "",
        "The simulated Hyper-V host's VMs and how they behave (`VMBUSOPS_LAB`, or `[sim] lab`; default:",
        "the built-in lab, `src/vmbusops/sim/default_lab.toml`). Every key but a VM's `name` is",
        "optional; an unknown key is an error. Under `[vm.files]` each key is a guest path and its value",
        "the file's text.",
        "",
    ]
    lines += _table_section(Table("host", frozenset(lab.HOST_KEYS), lab.HostConfig), example, "`[host]`")
    lines += _table_section(Table("hosts", frozenset(lab.HOSTS_KEYS)), example, "`[[hosts]]`")
    # A VM's host defaults to the lab's first host: derived, not VMSpec's placeholder.
    vm = Table("vm", frozenset(lab.VM_KEYS), lab.VMSpec, (("host", "(derived)"),), required=frozenset({"name"}))
    lines += _table_section(vm, example, "`[[vm]]`: one per VM")
    lines += _table_section(Table("vm.faults", frozenset(lab.FAULT_KEYS), lab.FaultSpec), example, "`[vm.faults]`")
    lines += _table_section(Table("generate", frozenset(lab.GENERATE_KEYS)), example, "`[generate]`")
    group = Table(
        "group", frozenset(lab_groups.GROUP_KEYS), lab_groups.GroupSpec, (("type", "group_type"),), frozenset({"name"})
    )
    lines += _table_section(group, example, "`[[group]]`: one per Hyper-V VM group")
    return lines


def environment_section() -> list[str]:
    lines = ["## Environment variables", "", "| variable | read by | meaning |", "|---|---|---|"]
    for name in sorted(ENVIRONMENT, key=lambda n: (n.lstrip("_").startswith("VMBUSOPS_") is False, n.lstrip("_"))):
        who, meaning = ENVIRONMENT[name]
        lines.append(f"| `{name}` | {_cell(who)} | {_cell(meaning)} |")
    return [*lines, ""]


COMPLETION = """## Shell completion

`vmbusops` completes its commands, options and choices in bash (4.4+), zsh and fish:

```sh
eval "$(_VMBUSOPS_COMPLETE=bash_source vmbusops)"     # in ~/.bashrc
eval "$(_VMBUSOPS_COMPLETE=zsh_source vmbusops)"      # in ~/.zshrc
_VMBUSOPS_COMPLETE=fish_source vmbusops > ~/.config/fish/completions/vmbusops.fish
```
"""


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [
        "# vmbusops reference",
        "",
        "Made by `vmbusops reference` from the code: the keys each parser accepts, the defaults its",
        "dataclasses hold and the meanings in its module's docstring. A test fails when this file and",
        "the code differ; regenerate it with `vmbusops reference > docs/reference.md`.",
        "",
        *config_section(),
        *lab_section(),
        *environment_section(),
    ]
    return "\n".join(lines) + "\n" + COMPLETION
