"""``python -m vmbusops.sim [--lab FILE] [--state-dir DIR] [--as HOST]``: a fake PowerShell server on
stdin/stdout.

``--as HOST`` serves one host of a lab that has several (``[[hosts]]``; the host spec
``sim:HOST`` starts it so): only the VMs it owns now (:mod:`vmbusops.sim.cluster`). Without it, the
process serves every VM of the lab, as a single-host lab's one host.

Only OutOfProc packets ever reach stdout and, once it serves, nothing reaches stderr (clients such
as pypsrp merge stderr into stdout, so one stray line would break the protocol). Diagnostics go to
the file named by ``VMBUSOPS_SIM_LOG`` when it is set, and nowhere otherwise. The one exception is
a refusal to start (a bad lab file or state directory): then no protocol will follow, and one line
on stderr (``vmbusops.psrp.transport.refusal_line``) carries the reason to the client, which shows
it as the usage error it is.

A fleet host that is down (``vmbusops lab fail-host``) is a node that died: its process exits at
once (code :data:`EXIT_HOST_DOWN`) when it sees the host fail, and a new one says why on stderr
and exits with the same code instead of serving, so the client reports a host that cannot be
reached (not a usage error) and an agent keeps trying to reopen it until ``lab restore-host``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import NoReturn

import trio

from vmbusops.errors import ConfigError, VmbusOpsError
from vmbusops.psrp.transport import refusal_line
from vmbusops.sim import default_state_dir
from vmbusops.sim.cluster import host_down_error, serving
from vmbusops.sim.hyperv import HyperVHost
from vmbusops.sim.lab import load_lab
from vmbusops.sim.server import PSRPServer
from vmbusops.sim.state import HostStore

ENV_LOG = "VMBUSOPS_SIM_LOG"
EXIT_USAGE = 2
EXIT_CRASH = 70
#: sysexits' EX_UNAVAILABLE: the fleet host this process serves is down.
EXIT_HOST_DOWN = 69
#: How often a fleet host's process looks whether its host was failed.
DOWN_POLL_SECONDS = 0.25


class _QuietParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        logging.getLogger("vmbusops.sim").error("bad command line: %s", message)
        raise SystemExit(EXIT_USAGE)


def _setup_logging() -> None:
    root = logging.getLogger()
    root.handlers.clear()
    path = os.environ.get(ENV_LOG)
    if path:
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    # Without a log file, INFO records (two per pipeline) would be built only to be dropped.
    root.setLevel(logging.INFO if path else logging.WARNING)
    # psrpcore logs whole messages at DEBUG, credentials included (encrypted, but still): never.
    logging.getLogger("psrpcore").setLevel(logging.WARNING)
    logging.captureWarnings(True)


def _die(identity: str) -> NoReturn:
    """A node that dies takes its processes with it, mid-command or idle: no last words."""
    logging.getLogger("vmbusops.sim").warning("host %s failed: exiting as a dead node", identity)
    logging.shutdown()
    os._exit(EXIT_HOST_DOWN)


async def _exit_when_down(host: HyperVHost) -> None:
    """Exit as soon as the lab fails this host, even while no command runs (:meth:`HyperVHost.check_down`
    exits too when a command or a session's watch sees it first)."""
    while True:
        await trio.sleep(DOWN_POLL_SECONDS)
        host.check_down()


async def _serve(host: HyperVHost) -> None:
    # Our own copies of stdin/stdout; fds 1 and 2 then point at /dev/null so a stray print or a
    # library writing to stderr cannot corrupt the packet stream.
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)

    async def crash() -> None:
        logging.getLogger("vmbusops.sim").warning("chaos: exiting abruptly as the lab's crash_on asks")
        logging.shutdown()
        os._exit(EXIT_CRASH)

    server = PSRPServer(host, stdout, crash=crash)
    async with stdin, stdout, trio.open_nursery() as nursery:
        if host.identity is not None:
            nursery.start_soon(_exit_when_down, host)
        await server.serve(stdin)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = _QuietParser(prog="python -m vmbusops.sim", description=__doc__)
    parser.add_argument("--lab", type=Path, default=None, help="lab TOML file (default: the built-in lab)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default: $VMBUSOPS_SIM_STATE, else $VMBUSOPS_HOME/sim)",
    )
    parser.add_argument(
        "--as", dest="identity", default=None, metavar="HOST", help="serve this host of the lab's [[hosts]]"
    )
    args = parser.parse_args(argv)
    # From here on only packets may reach stdout (see _serve for the file descriptors).
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    sys.stderr = sys.stdout
    log = logging.getLogger("vmbusops.sim")
    try:
        lab = load_lab(args.lab)
        identity = None if args.identity is None else serving(lab, args.identity).name
        store = HostStore(lab, args.state_dir or default_state_dir())
        host = HyperVHost(lab, store, identity=identity, on_down=None if identity is None else partial(_die, identity))
        if host.is_down():
            assert identity is not None
            down = host_down_error(identity)
            log.warning("host %s is down: not serving", identity)
            # Not a refusal (a usage error): an unreachable host, which the client reports as one.
            os.write(2, f"{down.message}; {down.hint}\n".encode())
            return EXIT_HOST_DOWN
    except VmbusOpsError as exc:
        log.exception("cannot start")
        # fd 2 is still the client's pipe here (only sys.stderr was replaced): say why, once.
        reason = exc if isinstance(exc, ConfigError) else ConfigError(exc.message, hint=exc.hint)
        os.write(2, refusal_line(reason))
        return EXIT_USAGE
    log.info(
        "simulator started: lab %s (%d VMs), state %s, host %s",
        lab.source, len(lab.vms), store.state_dir, identity or "(all)",
    )  # fmt: skip
    trio.run(_serve, host)
    log.info("simulator exiting")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
