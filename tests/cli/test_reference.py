"""The reference (docs/reference.md, ``vmbusops reference``) is the code's: the committed file is
what the code makes now, every key a parser accepts is explained and nothing else is, every
environment variable the shipped code names is described, and shell completion works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.cli.test_quickstart import checkout_command
from tests.clirun import vmbusops

from vmbusops import config, inventory, reference
from vmbusops.config import load_config
from vmbusops.sim import lab

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reference.md"


def test_the_committed_reference_is_what_the_code_makes() -> None:
    assert DOC.read_text("utf-8") == reference.render(), (
        "docs/reference.md differs from the code; regenerate it: vmbusops reference > docs/reference.md"
    )


def test_vmbusops_reference_prints_it() -> None:
    ran = vmbusops("reference")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == DOC.read_text("utf-8")


def test_every_accepted_key_is_in_the_reference() -> None:
    text = reference.render()
    sections = {
        "## config.toml": [*(f"`{k}`" for keys in config._KNOWN.values() for k in keys),
                           *(f"`{k}`" for k in inventory.HOST_KEYS)],
        "## The lab file": [f"`{k}`" for k in (*lab.HOST_KEYS, *lab.VM_KEYS, *lab.FAULT_KEYS, *lab.GENERATE_KEYS)],
    }  # fmt: skip
    for heading, keys in sections.items():
        body = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for key in keys:
            assert f"| {key} |" in body, (heading, key)


def test_a_key_the_parser_accepts_without_a_meaning_fails_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(config._KNOWN, "agent", {*config._KNOWN["agent"], "brand_new"})
    with pytest.raises(reference.ReferenceError, match=r"\[agent\] accepts brand_new"):
        reference.render()


def test_a_key_explained_that_the_parser_refuses_fails_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "FAULT_KEYS", lab.FAULT_KEYS - {"hang_on_restart"})
    with pytest.raises(reference.ReferenceError, match="explains hang_on_restart, which the parser refuses"):
        reference.render()


def test_a_key_without_a_comment_fails_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (inventory.__doc__ or "").replace("# and its key", "")
    monkeypatch.setattr(inventory, "__doc__", doc)
    with pytest.raises(reference.ReferenceError, match="client_key: the docstring's example gives it no meaning"):
        reference.render()


def test_the_config_example_the_reference_is_made_from_is_a_valid_config_toml(tmp_path: Path) -> None:
    for module in (config, inventory):
        path = tmp_path / f"{module.__name__}.toml"
        path.write_text(textwrap.dedent((module.__doc__ or "").split("::", 1)[1]).replace("\n\n\n", "\n\n"))
        load_config(path)  # an unknown key or a bad value would be a ConfigError


SHIPPED = [ROOT / "src", ROOT / "host_agent", ROOT / "scripts", ROOT / "vmbusops"]
NAME = re.compile(r"(?<![A-Za-z0-9_])VMBUSOPS_[A-Z0-9_]*[A-Z0-9]")


def names_in_shipped_code() -> set[str]:
    found: set[str] = set()
    for top in SHIPPED:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            if path.suffix in {".pyc", ".sqlite"} or "__pycache__" in path.parts:
                continue
            found |= set(NAME.findall(path.read_text("utf-8", errors="replace")))
    return found


def test_every_environment_variable_the_code_names_is_described() -> None:
    from vmbusops.fleet.names import LOG_STREAM, WORK_STREAM

    named = names_in_shipped_code() - {LOG_STREAM, WORK_STREAM}  # the fleet's stream names, not variables
    assert {"VMBUSOPS_HOME", "VMBUSOPS_LAB", "VMBUSOPS_TOKEN"} <= named  # the scan sees them
    described = {n for n in reference.ENVIRONMENT if n.startswith("VMBUSOPS_")}
    assert sorted(named - described) == [], "describe these in vmbusops.reference.ENVIRONMENT"
    assert sorted(described - named) == [], "these are described but nothing reads them any more"


def completion(env_value: str, *, more: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "_VMBUSOPS_COMPLETE": env_value, **(more or {})}
    return subprocess.run([sys.executable, "-m", "vmbusops"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash_source", "complete -o nosort -F _vmbusops_completion vmbusops"),
    ("zsh_source", "#compdef vmbusops"),
    ("fish_source", "complete --no-files --command vmbusops"),
])  # fmt: skip
def test_completion_scripts_are_printed(shell: str, marker: str) -> None:
    proc = completion(shell)
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout
    assert f"_VMBUSOPS_COMPLETE={shell}" in reference.render() + (ROOT / "README.md").read_text()


def test_bash_completion_completes_commands_and_choices_in_a_real_bash(tmp_path: Path) -> None:
    """The README's line, sourced by bash, then the call bash makes on TAB (the function, given the command name): it asks the
    command on PATH (lazy subcommands included) and fills COMPREPLY."""
    bin_dir = tmp_path / "bin"
    checkout_command(bin_dir)
    script = textwrap.dedent("""\
        eval "$(_VMBUSOPS_COMPLETE=bash_source vmbusops)"
        COMP_WORDS=(vmbusops ref); COMP_CWORD=1; _vmbusops_completion vmbusops; echo "1:${COMPREPLY[*]}"
        COMPREPLY=(); COMP_WORDS=(vmbusops logs 1 --stream ve); COMP_CWORD=4; _vmbusops_completion vmbusops; echo "2:${COMPREPLY[*]}"
        """)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert lines["1"].split() == ["reference"], proc.stderr
    assert lines["2"].split() == ["verbose"]
