"""Bundle verification throughput against ``sha256sum`` over the same bytes, with peak memory.

Run with ``./scripts/bench bundle [--files 8] [--mib 128] [--dir DIR] [--rounds 3]``. It writes
``files x mib`` MiB of payload into a temporary directory, builds and signs a bundle holding it,
warms the page cache, then times, best of ``--rounds``:

* ``sha256sum`` over the payload files (one process, all files), the goal's reference;
* ``hashlib.sha256`` (OpenSSL) over the same files: where the host's coreutils lacks SHA
  extensions, sha256sum is slower than OpenSSL, so this is the stricter floor;
* ``vmbusops`` verification of the bundle (every check, hash only), in a fresh child process
  whose peak RSS is reported, so the figure is the verifier's own memory;
* acceptance (verification plus extraction to disk), once, for scale.

The goal is verification at >= 0.85x of sha256sum with memory flat (tens of MiB, whatever the size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.manifest import StepKind
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, parse_trust_policy
from vmbusops.bundle.replay import ReplayStore
from vmbusops.bundle.verify import accept_bundle, verify_bundle

MIB = 1 << 20


def _write_payload(root: Path, files: int, mib: int) -> list[Path]:
    paths = []
    (root / "files").mkdir(parents=True)
    block = os.urandom(4 * MIB)
    for i in range(files):
        path = root / "files" / f"payload{i}.bin"
        with path.open("wb") as f:
            for j in range(mib // 4):
                # Distinct content per block, cheaply: a counter in front of a shared random block.
                f.write(i.to_bytes(4, "little") + j.to_bytes(4, "little") + block[8:])
        paths.append(path)
    return paths


def _bundle_toml(paths: list[Path]) -> str:
    lines = ['name = "bench"', "version = 1", 'expires = "1d"', 'credential = "lab-admin"', "", "[targets]"]
    lines += ['vms = ["web01"]', ""]
    for p in paths:
        lines += [
            "[[steps]]",
            'kind = "copy"',
            f'source = "files/{p.name}"',
            f"destination = 'C:\\bench\\{p.name}'",
            "",
        ]
    return "\n".join(lines)


def _warm(paths: list[Path]) -> None:
    for p in paths:
        with p.open("rb", buffering=0) as f:
            while f.read(8 * MIB):
                pass


def _child_verify(bundle: Path, policy_file: Path) -> None:
    """Runs in a fresh process: verify once, print seconds and this process's peak RSS."""
    policy = parse_trust_policy(policy_file.read_text())
    with ReplayStore.in_memory() as replay:
        started = time.perf_counter()
        verify_bundle(bundle, policy=policy, replay=replay)
        elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "peak_rss_mib": peak_kib / 1024}))


def _time_sha256sum(paths: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _time_hashlib(paths: list[Path]) -> float:
    """OpenSSL's SHA-256 through hashlib over the same files: the floor for any Python verifier."""
    started = time.perf_counter()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    for p in paths:
        digest = hashlib.sha256()
        with p.open("rb", buffering=0) as f:
            while got := f.readinto(buffer):
                digest.update(view[:got])
    return time.perf_counter() - started


def _time_verify(bundle: Path, policy_file: Path) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-verify", str(bundle), str(policy_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    return float(result["seconds"]), float(result["peak_rss_mib"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=128, help="size of each payload file (multiple of 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the temporary data")
    parser.add_argument("--child-verify", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_verify:
        _child_verify(*args.child_verify)
        return

    total = args.files * args.mib * MIB
    work = Path(tempfile.mkdtemp(prefix="vmbusops-bench-", dir=args.dir))
    try:
        print(f"payload: {args.files} x {args.mib} MiB = {total / MIB:.0f} MiB in {work}")
        source = work / "src"
        paths = _write_payload(source, args.files, args.mib)
        (source / "bundle.toml").write_text(_bundle_toml(paths))
        bundle = work / "bench.vmb"
        key = PrivateKey.generate()
        build_bundle(source, bundle, now=datetime.now(UTC))
        sign_bundle(bundle, key)
        policy = TrustPolicy().with_key(
            TrustedKey(name="bench", public=key.public_key()), Scope(keys=(), steps=frozenset(StepKind))
        )
        policy_file = work / "trust.toml"
        policy_file.write_text(policy.to_toml())
        _warm([*paths, bundle])

        sha_best = min(_time_sha256sum(paths) for _ in range(args.rounds))
        hashlib_best = min(_time_hashlib(paths) for _ in range(args.rounds))
        runs = [_time_verify(bundle, policy_file) for _ in range(args.rounds)]
        verify_best = min(s for s, _ in runs)
        peak = max(r for _, r in runs)

        with ReplayStore.in_memory() as replay:
            started = time.perf_counter()
            accepted = accept_bundle(bundle, policy=policy, replay=replay, workdir=work / "accepted")
            accept_seconds = time.perf_counter() - started
        shutil.rmtree(accepted.directory)

        def rate(seconds: float) -> str:
            return f"{total / MIB / seconds:8.0f} MiB/s ({seconds:.2f} s)"

        print(f"sha256sum (same files)     {rate(sha_best)}")
        print(f"hashlib.sha256 (same files){rate(hashlib_best)}")
        print(f"bundle verify (hash only)  {rate(verify_best)}")
        print(f"bundle accept (+extract)   {rate(accept_seconds)}")
        ratio = sha_best / verify_best
        verdict = "meets" if ratio >= 0.85 else "MISSES"
        print(f"verify / sha256sum         {ratio:.2f}x  ({verdict} the 0.85x goal)")
        print(f"verify / hashlib.sha256    {hashlib_best / verify_best:.2f}x  (the hashing floor in Python)")
        print(f"verifier peak RSS          {peak:.1f} MiB for {total / MIB:.0f} MiB of payload")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
