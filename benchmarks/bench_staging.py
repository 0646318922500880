"""Staging throughput over SSH against OpenSSH's own ``scp`` of the same files, in the same run.

Run with ``./scripts/bench staging [--files 8] [--mib 128] [--rounds 2]``. It starts a private
OpenSSH server on 127.0.0.1 (the one the tests use: its own config, host key and
authorized_keys, the simulator as the ``powershell`` subsystem), writes ``files x mib`` MiB of
random payload, warms the page cache, then alternates, best of ``--rounds``:

* ``scp`` (OpenSSH's client, which speaks SFTP since 9.0) of all files into a fresh folder;
* ``scp -O`` (the legacy SCP protocol), for reference;
* ``vmbusops`` :func:`stage_files` over one SSH connection: per-job folder, SFTP upload, then
  ``Get-FileHash`` of every file *on the host* against the manifest's SHA-256, then removal.
  Reported both as upload only and as upload + verification (the figure the goal is about).

Both sides use each tool's default cipher negotiation. Goal: >= 0.8x of scp's throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "remote"))

from sshd import Sshd, find_sshd, start_sshd  # noqa: E402

from vmbusops.guestops.remote import open_ssh_host  # noqa: E402
from vmbusops.guestops.staging import StageFile, stage_files  # noqa: E402

MIB = 1 << 20


def _write_payload(directory: Path, files: int, mib: int) -> list[StageFile]:
    out = []
    block = os.urandom(MIB)
    for i in range(files):
        path = directory / f"payload-{i:02d}.bin"
        digest = hashlib.sha256()
        with path.open("wb") as fh:
            for j in range(mib):
                chunk = block[j % 251 :] + block[: j % 251]  # distinct per MiB, cheap to make
                fh.write(chunk)
                digest.update(chunk)
        out.append(StageFile(path, sha256=digest.hexdigest()))
    return out


def _scp(server: Sshd, files: list[StageFile], dest: Path, *, legacy: bool) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = ["scp", "-q", "-B", "-P", str(server.port), "-i", str(server.client_key),
            "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-F", "/dev/null"]
    if legacy:
        argv.append("-O")
    argv += [str(f.local) for f in files] + [f"{server.username}@127.0.0.1:{dest}/"]
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    elapsed = time.perf_counter() - start
    for f in files:
        got = hashlib.sha256((dest / f.local.name).read_bytes()).hexdigest()
        assert got == f.sha256, f"scp corrupted {f.local.name}"
    shutil.rmtree(dest)
    return elapsed


async def _ours(server: Sshd, files: list[StageFile]) -> tuple[float, float]:
    async with open_ssh_host(server.target(), staging_root=str(server.staging_root)) as host:
        stager = host.stager
        start = time.perf_counter()
        folder = await stager.make_folder("bench-upload-only")
        await stager.put(files, folder)
        upload = time.perf_counter() - start
        await stager.remove_folder(folder)
        start = time.perf_counter()
        async with stage_files(host, files, job="bench") as paths:
            verified = time.perf_counter() - start
            assert len(paths) == len(files)
        assert not any(server.staging_root.iterdir()), "the staging folder was not removed"
    return upload, verified


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    binary = find_sshd()
    if binary is None:
        print("sshd is not installed (./scripts/bench installs openssh-server)", file=sys.stderr)
        return 2
    total = args.files * args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="vmbusops-bench-staging-") as tmp:
        base = Path(tmp)
        server = start_sshd(base / "sshd", binary)
        try:
            lab = ROOT / "src" / "vmbusops" / "sim" / "default_lab.toml"
            server.use_lab(lab)
            payload = base / "payload"
            payload.mkdir()
            print(f"writing {args.files} x {args.mib} MiB of payload ...", file=sys.stderr)
            files = _write_payload(payload, args.files, args.mib)
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, fn in (
                    ("scp", lambda: _scp(server, files, base / "scp-dest", legacy=False)),
                    ("scp -O", lambda: _scp(server, files, base / "scp-dest", legacy=True)),
                ):
                    best[name] = min(best.get(name, float("inf")), fn())
                upload, verified = trio.run(_ours, server, files)
                best["vmbusops upload"] = min(best.get("vmbusops upload", float("inf")), upload)
                best["vmbusops staged+verified"] = min(best.get("vmbusops staged+verified", float("inf")), verified)
        finally:
            server.stop()
    print(f"\nstaging {total / MIB:.0f} MiB in {args.files} files to OpenSSH on 127.0.0.1, best of {args.rounds}")
    print(f"{'':28}{'seconds':>9}{'MiB/s':>9}{'vs scp':>9}")
    for name, secs in best.items():
        print(f"{name:28}{secs:9.2f}{total / MIB / secs:9.0f}{best['scp'] / secs:8.2f}x")
    ratio = best["scp"] / best["vmbusops staged+verified"]
    print(f"\ngoal: staged + verified on the host >= 0.80x scp: {ratio:.2f}x -> {'met' if ratio >= 0.8 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
