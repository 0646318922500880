"""``vmbusops reference``: every setting of config.toml and of a lab file, and every environment
variable, made from the code (:mod:`vmbusops.reference`); docs/reference.md is its output."""

from __future__ import annotations

import click

from vmbusops.reference import render


@click.command("reference")
def reference_cmd() -> None:
    """Print the reference for config.toml, the lab file, the environment variables and shell
    completion (Markdown; docs/reference.md is this output)."""
    click.echo(render(), nl=False)
