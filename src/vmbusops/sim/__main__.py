"""``python -m vmbusops.sim [--lab FILE] [--state-dir DIR]``: a fake PowerShell server on stdin/stdout.

Only OutOfProc packets ever reach stdout and, once it serves, nothing reaches stderr (clients such
as pypsrp merge stderr into stdout, so one stray line would break the protocol). Diagnostics go to
the file named by ``VMBUSOPS_SIM_LOG`` when it is set, and nowhere otherwise. The one exception is
a refusal to start (a bad lab file or state directory): then no protocol will follow, and one line
on stderr (``vmbusops.psrp.transport.refusal_line``) carries the reason to the client, which shows
it as the usage error it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import trio

from vmbusops.errors import ConfigError, VmbusOpsError
from vmbusops.psrp.transport import refusal_line
from vmbusops.sim import default_state_dir
from vmbusops.sim.hyperv import HyperVHost
from vmbusops.sim.lab import load_lab
from vmbusops.sim.server import PSRPServer
from vmbusops.sim.state import HostStore

ENV_LOG = "VMBUSOPS_SIM_LOG"
EXIT_USAGE = 2
EXIT_CRASH = 70


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
    async with stdin, stdout:
        await server.serve(stdin)


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = _QuietParser(prog="python -m vmbusops.sim", description=__doc__)
    parser.add_argument("--lab", type=Path, default=None, help="lab TOML file (default: the built-in lab)")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="state directory (default: $VMBUSOPS_HOME/sim)"
    )
    args = parser.parse_args(argv)
    # From here on only packets may reach stdout (see _serve for the file descriptors).
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    sys.stderr = sys.stdout
    log = logging.getLogger("vmbusops.sim")
    try:
        lab = load_lab(args.lab)
        store = HostStore(lab, args.state_dir or default_state_dir())
    except VmbusOpsError as exc:
        log.exception("cannot start")
        # fd 2 is still the client's pipe here (only sys.stderr was replaced): say why, once.
        reason = exc if isinstance(exc, ConfigError) else ConfigError(exc.message, hint=exc.hint)
        os.write(2, refusal_line(reason))
        return EXIT_USAGE
    log.info("simulator started: lab %s (%d VMs), state %s", lab.source, len(lab.vms), store.state_dir)
    trio.run(_serve, HyperVHost(lab, store))
    log.info("simulator exiting")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
