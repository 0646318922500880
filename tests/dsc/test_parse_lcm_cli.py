"""`vmbusops dsc parse-lcm` reads a transcript a guest wrote: what it prints is guest text, shown
as the rest of the command line shows it (controls as \\xNN), never sent raw to the terminal."""

from __future__ import annotations

from pathlib import Path

from tests.clirun import vmbusops


def test_control_characters_in_a_transcript_are_shown_escaped(tmp_path: Path) -> None:
    transcript = tmp_path / "lcm.txt"
    transcript.write_text(
        "VERBOSE: [WEB01]: LCM:  [ Start  Set      ]  [[File]Motd]\x1b[2J\x1b]0;pwned\x07\n"
        "plain line with\bbackspace\n",
        encoding="utf-8",
    )
    ran = vmbusops("dsc", "parse-lcm", str(transcript))
    assert ran.returncode == 0, ran.stderr
    assert "\x1b" not in ran.stdout and "\x07" not in ran.stdout and "\b" not in ran.stdout
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in ran.stdout, ran.stdout
    assert "plain line with\\x08backspace" in ran.stdout, ran.stdout
