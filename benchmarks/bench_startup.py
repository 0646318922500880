"""How long `vmbusops` takes to start, against the interpreter starting and doing nothing.

Medians of interleaved rounds (anchor, ours, anchor, ours, ...): `python -c pass` is the floor any
Python command pays; `vmbusops --version` and `vmbusops exec --help` are what an operator or a
completion script pays before any work. Leaves out: the first, cold-cache start (the rounds are
warm), and the work a command then does (a host process, a pool).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

VMBUSOPS = str(Path(sys.executable).parent / "vmbusops")


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main(rounds: int) -> None:
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "vmbusops --version": [VMBUSOPS, "--version"],
        "vmbusops exec --help": [VMBUSOPS, "exec", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for argv in cases.values():  # warm the page cache, untimed
        timed(argv)
    for _ in range(rounds):
        for name, argv in cases.items():
            times[name].append(timed(argv))
    floor = statistics.median(times["python -c pass"])
    print(f"start-up, median of {rounds} interleaved rounds (warm):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<22} {median * 1000:7.1f} ms  {median / floor:5.2f}x the interpreter's own start")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    main(parser.parse_args().rounds)
