"""Staging files onto a remote host over SFTP, verified on the host, removed when the job ends."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from sshd import Sshd

from vmbusops.guestops.connect import open_host
from vmbusops.guestops.remote import open_ssh_host
from vmbusops.guestops.staging import StageFile, StagingError, stage_files
from vmbusops.records import OutputRecord


def _files(tmp_path: Path) -> list[Path]:
    small = tmp_path / "settings.ini"
    small.write_text("mode=maintenance\n", encoding="utf-8")
    big = tmp_path / "payload.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    return [small, big, empty]


def _same_bytes(a: Path | str, b: Path | str) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def _left_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def test_staged_files_arrive_intact_feed_copy_vmfile_and_are_removed(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    lab = make_lab()
    sshd.use_lab(lab.path)
    files = _files(tmp_path)
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        async with stage_files(host, files, job="42") as paths:
            assert [Path(p).name for p in paths] == [f.name for f in files]
            folder = Path(paths[0]).parent
            assert folder.parent == sshd.staging_root and folder.name.startswith("job-42-")
            for local, staged in zip(files, paths, strict=True):
                assert _same_bytes(staged, local)
                assert staged != str(local)
            await host.copy_to_guest("web01", paths[0], "C:\\Config\\settings.ini")
            records, outcome = await host.run_in_guest(
                "web01", "Get-Content -Path 'C:\\Config\\settings.ini'", lab.credential()
            )
            assert outcome.ok and [r.record.value for r in records if isinstance(r.record, OutputRecord)] == [
                "mode=maintenance"
            ]
        assert not await trio.Path(folder).exists()
    assert _left_in(sshd.staging_root) == []


async def test_the_folder_is_removed_on_failure_and_on_cancellation(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    sshd.use_lab(make_lab().path)
    files = _files(tmp_path)
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        seen: list[bool] = []

        async def failing_step() -> None:
            async with stage_files(host, files, job="fails") as paths:
                seen.append(_same_bytes(paths[1], files[1]))
                raise RuntimeError("step failed")

        with pytest.raises(RuntimeError, match="step failed"):
            await failing_step()
        assert seen == [True]
        with trio.move_on_after(0.5) as scope:
            async with stage_files(host, files, job="cancelled") as paths:
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert not await trio.Path(paths[0]).parent.exists()
        # The host connection still works after both.
        assert await host.get_vm("web01")
    assert _left_in(sshd.staging_root) == []


async def test_a_file_that_does_not_hash_as_promised_is_refused(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    sshd.use_lab(make_lab().path)
    small, big, _ = _files(tmp_path)
    wrong = hashlib.sha256(b"something else").hexdigest()
    right = hashlib.sha256(small.read_bytes()).hexdigest()
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        with pytest.raises(StagingError, match=f"expected SHA-256 {wrong}, the host reports {right}"):
            async with stage_files(host, [StageFile(big), StageFile(small, sha256=wrong)]):
                pytest.fail("the block must not run")
        with pytest.raises(StagingError, match="cannot be a staged file name"):
            async with stage_files(host, [StageFile(small, name="..\\evil.ps1")]):
                pytest.fail("the block must not run")
    assert _left_in(sshd.staging_root) == []


async def test_copy_to_guest_with_a_local_path_stages_it_on_demand(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    lab = make_lab()
    sshd.use_lab(lab.path)
    src = tmp_path / "agent.conf"
    src.write_text("level=3\n", encoding="utf-8")
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        for vm in ("web01", "web02"):
            await host.copy_to_guest(vm, str(src), "C:\\Temp\\agent.conf")
        staged = list(sshd.staging_root.rglob("*agent.conf"))
        assert len(staged) == 1, "the same content is uploaded once"
        records, outcome = await host.run_in_guest("web02", "Get-Content -Path 'C:\\Temp\\agent.conf'", lab.credential("web02"))
        assert outcome.ok and [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["level=3"]
    assert _left_in(sshd.staging_root) == []


async def test_a_local_host_needs_no_staging(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    lab = make_lab()
    files = _files(tmp_path)
    async with open_host("sim", config=lab.config) as host:
        async with stage_files(host, files) as paths:
            assert paths == [str(f) for f in files]
