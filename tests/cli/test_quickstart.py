"""The README's quick start, run as written: every line of the block after the ``quick start`` marker,
in a fresh folder with nothing prepared, each command's exit code checked as it goes. The command
on PATH is the checkout's own (``python -m vmbusops`` of this src/), which is what the README's
setup line puts there after ``./scripts/demo``; that line and the ``./vmbusops`` wrapper are
checked here too."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- quick start:"

pytestmark = pytest.mark.slow


def quick_start_blocks(text: str) -> list[str]:
    """The code blocks that follow a quick-start marker, as written."""
    blocks = []
    for part in text.split(MARKER)[1:]:
        match = re.search(r"^```(?:sh|bash)\n(.*?)^```$", part, re.S | re.M)
        assert match is not None, "a quick-start marker without a sh block after it"
        assert part[: match.start()].count("\n") <= 1, "the block must follow its marker at once"
        blocks.append(match.group(1))
    return blocks


def commands(block: str) -> list[str]:
    """The block's commands: one per line, backslash continuations joined, comments left to bash."""
    out: list[str] = []
    pending = ""
    for raw in block.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = pending + raw
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    assert not pending, "a continuation line ends the block"
    return out


def checked_script(cmds: list[str]) -> str:
    """A bash script running each command in turn in one shell (exports carry over), stopping at
    the first that does not exit 0 and naming it."""
    lines = ["set -o pipefail"]
    for i, cmd in enumerate(cmds, 1):
        lines.append(f"echo '::out {i}'")  # where each command's stdout starts, for out_of()
        lines.append(cmd)
        lines.append(
            f'rc=$?; if [ "$rc" -ne 0 ]; then echo "quick start command {i} exited $rc: "{shlex.quote(cmd)} >&2; '
            f"exit 99; fi; echo '::done {i}' >&2"
        )
    return "\n".join(lines) + "\n"


def out_of(stdout: str, cmds: list[str]) -> dict[str, str]:
    """What each command of a :func:`checked_script` wrote on stdout."""
    parts = re.split(r"^::out (\d+)\n", stdout, flags=re.M)
    return {cmds[int(i) - 1]: text for i, text in zip(parts[1::2], parts[2::2], strict=True)}


def checkout_command(bin_dir: Path) -> Path:
    """A ``vmbusops`` that runs this checkout's code, as .venv/bin/vmbusops does."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "vmbusops"
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m vmbusops "$@"\n')
    exe.chmod(0o755)
    return exe


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def fresh_env(tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBUSOPS_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["TMPDIR"] = str(tmp_path)  # the block's own mktemp -d lands here, and goes with the test
    env["HOME"] = str(tmp_path / "user")
    env["COLUMNS"] = "120"
    return env


def test_the_readme_has_one_quick_start_block_of_real_commands() -> None:
    [block] = quick_start_blocks(README.read_text("utf-8"))
    cmds = commands(block)
    assert sum(c.startswith("vmbusops ") for c in cmds) >= 10
    # Every file a command names is one the block makes itself, or one made by a command before it.
    assert "echo 'Managed by vmbusops' > motd.txt" in cmds


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    [block] = quick_start_blocks(README.read_text("utf-8"))
    cmds = commands(block)
    work = tmp_path / "fresh"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    checkout_command(bin_dir)
    proc = run(["bash", "--noprofile", "--norc", "-c", checked_script(cmds)], work, fresh_env(tmp_path, bin_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"::done {len(cmds)}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "web01: copied motd.txt" in proc.stdout
    assert "web01 | Managed by vmbusops" in proc.stdout
    assert "use-a-real-passphrase" not in proc.stdout + proc.stderr
    # The block made its own home under TMPDIR, never the user's.
    assert not (tmp_path / "user" / ".vmbusops").exists()
    assert sorted(p.name for p in work.iterdir()) == ["lab-demo", "lab-demo.vmb", "motd.txt"]
    # A command that shows what the job did shows something: the block's example has it to show.
    shown = out_of(proc.stdout, cmds)
    for cmd in cmds:
        if cmd.startswith(("vmbusops logs", "vmbusops jobs show")):
            assert shown[cmd].strip(), f"{cmd!r} printed nothing"


def test_the_quick_start_runs_again_in_the_same_folder(tmp_path: Path) -> None:
    """Run twice where it was run before: `bundle init` finds its own example unchanged and says
    so, and every command exits 0 again."""
    cmds = commands(quick_start_blocks(README.read_text("utf-8"))[0])
    work = tmp_path / "again"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    checkout_command(bin_dir)
    env = fresh_env(tmp_path, bin_dir)
    for _ in range(2):
        proc = run(["bash", "--noprofile", "--norc", "-c", checked_script(cmds)], work, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lab-demo already holds the example bundle source, unchanged" in proc.stdout


def test_a_failing_quick_start_command_fails_the_run(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    checkout_command(bin_dir)
    script = checked_script(["export VMBUSOPS_HOME=$(mktemp -d)", "vmbusops copy --vm web01 ./absent.txt 'C:\\x'",
                             "echo never"])  # fmt: skip
    proc = run(["bash", "-c", script], tmp_path, fresh_env(tmp_path, bin_dir))
    assert proc.returncode == 99
    assert "quick start command 2 exited" in proc.stderr
    assert "never" not in proc.stdout


def test_the_setup_line_puts_the_venv_command_on_path() -> None:
    """The README's PATH line names what ./scripts/demo makes: .venv at the checkout's root, whose
    bin/ gets pyproject's console script ``vmbusops``."""
    readme = README.read_text("utf-8")
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in readme
    assert 'VENV="$ROOT/.venv"' in (ROOT / "scripts" / "_bootstrap.sh").read_text()
    assert 'vmbusops = "vmbusops.cli.main:main"' in (ROOT / "pyproject.toml").read_text()
    assert "bootstrap_venv" in (ROOT / "scripts" / "demo").read_text()


def fake_checkout(tmp_path: Path) -> Path:
    """The wrapper with the bootstrap it sources and the pyproject.toml it hashes."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "vmbusops", root / "vmbusops")
    shutil.copy2(ROOT / "scripts" / "_bootstrap.sh", root / "scripts" / "_bootstrap.sh")
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_wrapper_runs_the_venv_command_from_any_folder(tmp_path: Path) -> None:
    root = fake_checkout(tmp_path)
    venv_bin = root / ".venv" / "bin"
    checkout_command(venv_bin)
    (venv_bin / "python").symlink_to(sys.executable)
    # A .venv that matches pyproject.toml: the wrapper installs nothing.
    stamp = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".vmbusops-stamp").write_text(stamp + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBUSOPS_")}
    env["VMBUSOPS_HOME"] = str(tmp_path / "home")
    proc = run([str(root / "vmbusops"), "--version"], elsewhere, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("vmbusops, version ")
    assert proc.stderr == ""  # nothing was installed, nothing said


def test_the_wrapper_bootstraps_a_missing_venv_first(tmp_path: Path) -> None:
    """With no .venv the wrapper goes through ./scripts/demo's bootstrap: here with a Python too old
    to make one, which the bootstrap refuses in one line before anything is created."""
    root = fake_checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBUSOPS_")}
    env["PYTHON"] = "/bin/false"
    proc = run([str(root / "vmbusops"), "vms"], tmp_path, env)
    assert proc.returncode == 2
    assert "vmbusops needs Python 3.11 or newer" in proc.stderr
    assert not (root / ".venv").exists()


def test_after_scripts_demo_the_line_it_prints_puts_vmbusops_on_path(tmp_path: Path) -> None:
    """./scripts/demo runs the tour, then says how to reach the command; doing what it says works."""
    root = fake_checkout(tmp_path)
    shutil.copy2(ROOT / "scripts" / "demo", root / "scripts" / "demo")
    venv_bin = root / ".venv" / "bin"
    checkout_command(venv_bin)
    (venv_bin / "python").symlink_to(sys.executable)
    stamp = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".vmbusops-stamp").write_text(stamp + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBUSOPS_")}
    env["TMPDIR"] = str(tmp_path)
    demo = run([str(root / "scripts" / "demo")], root, env)
    assert demo.returncode == 0, demo.stderr[-2000:]
    # The tour ends by checking each run's signed receipt as a tenant would.
    verified = [line.split("(")[0].strip() for line in demo.stdout.splitlines() if "receipt verified:" in line]
    assert verified == [f"receipt verified: {vm}" for vm in ("web01", "web02", "db01")], demo.stdout[-2000:]
    [hint] = [line for line in demo.stderr.splitlines() if line.startswith("==> vmbusops is ")]
    export = hint.split(": ", 1)[1].split(", or run ")[0]
    assert export == f'export PATH="{venv_bin}:$PATH"'
    after = run(["bash", "--norc", "-c", f"{export}; cd /; vmbusops --version"], tmp_path, env)
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("vmbusops, version ")
