"""The ``vmbusops`` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import sys

import click

from vmbusops import __version__
from vmbusops.cli.exitcodes import exit_code_for
from vmbusops.errors import VmbusOpsError


class _Group(click.Group):
    """Maps our errors to a one-line message and a documented exit code, in one place."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VmbusOpsError as exc:
            click.secho(f"vmbusops: {exc}", err=True, fg="red")
            ctx.exit(exit_code_for(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmbusops")
def cli() -> None:
    """Manage Hyper-V tenant VMs over the VMBus: Copy-VMFile and PowerShell Direct, with live records.

    State lives under $VMBUSOPS_HOME. The host defaults to the embedded simulator
    (--host sim); on a Hyper-V host use --host local.
    """


# --- subcommand registration: one line per module -------------------------------------------
# (each module defines click commands/groups; keep this block sorted)
from vmbusops.cli.agent_cmds import agent, schedule  # noqa: E402
from vmbusops.cli.bundle_cmds import bundle, keys, trust  # noqa: E402
from vmbusops.cli.cred_cmds import cred  # noqa: E402
from vmbusops.cli.demo import demo_cmd  # noqa: E402
from vmbusops.cli.dsc_cmds import dsc  # noqa: E402
from vmbusops.cli.engine_cmds import jobs, logs_cmd, run_cmd  # noqa: E402
from vmbusops.cli.guest_cmds import copy_cmd, exec_cmd, vms_cmd  # noqa: E402
from vmbusops.cli.host_cmds import hosts_cmd  # noqa: E402
from vmbusops.cli.remote import submit_cmd  # noqa: E402

cli.add_command(agent)
cli.add_command(bundle)
cli.add_command(copy_cmd)
cli.add_command(cred)
cli.add_command(demo_cmd)
cli.add_command(dsc)
cli.add_command(exec_cmd)
cli.add_command(hosts_cmd)
cli.add_command(jobs)
cli.add_command(keys)
cli.add_command(logs_cmd)
cli.add_command(run_cmd)
cli.add_command(schedule)
cli.add_command(submit_cmd)
cli.add_command(trust)
cli.add_command(vms_cmd)
# --- end of registration ---------------------------------------------------------------------


def main() -> None:
    sys.exit(cli.main(prog_name="vmbusops", standalone_mode=True))
