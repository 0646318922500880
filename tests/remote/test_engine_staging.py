"""A job on a remote host stages its bundle files once, shared by its runs, removed when it ends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from sshd import Sshd
from tests.builders import manifest, write_files

from vmbusops.engine import EngineOptions, JobSource, Journal, open_engine
from vmbusops.engine.states import State
from vmbusops.guestops.remote import RemoteHyperVHost, open_ssh_host
from vmbusops.guestops.staging import StageFile, Stager
from vmbusops.records import OutputRecord


class CountingStager:
    """The host's own stager, with a count of the folders it was asked to make."""

    def __init__(self, inner: Stager) -> None:
        self.inner = inner
        self.folders: list[str] = []
        self.put_done = trio.Event()

    @property
    def root(self) -> str:
        return self.inner.root

    async def make_folder(self, name: str) -> str:
        folder = await self.inner.make_folder(name)
        self.folders.append(folder)
        return folder

    async def put(self, files: Sequence[StageFile], folder: str) -> list[str]:
        paths = await self.inner.put(files, folder)
        self.put_done.set()
        return paths

    async def remove_folder(self, folder: str) -> None:
        await self.inner.remove_folder(folder)


def _copy_job(bundle: Path, vms: Sequence[str], *then: dict[str, Any]) -> JobSource:
    files = write_files(bundle, {"conf/agent.ini": "tier=gold\n"})
    copy = {"kind": "copy", "name": "conf", "source": "conf/agent.ini", "destination": "C:\\Agent\\agent.ini"}
    job = manifest(vms, [copy, *then], name="push-agent-conf", files=files)
    return JobSource(manifest=job, directory=bundle, source="test")


async def _run(host: RemoteHyperVHost, journal: Path, job: JobSource, credential: Any) -> dict[str, State]:
    async with open_engine(
        host,
        Journal(journal),
        credential_for=lambda _: credential,
        options=EngineOptions(heartbeat_interval=0.1),
    ) as engine:
        result = await engine.run_job(job)
    return result.runs


async def test_a_job_stages_its_files_once_and_removes_them_when_it_ends(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    lab = make_lab()
    sshd.use_lab(lab.path)
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        counting = CountingStager(host.stager)
        host.stager = counting

        runs = await _run(
            host, tmp_path / "ok.db", _copy_job(tmp_path / "ok", ["web01", "web02"]), lab.credential()
        )
        assert runs == {"web01": State.SUCCESS, "web02": State.SUCCESS}
        assert len(counting.folders) == 1, "one staging folder for the whole job, not one per run"
        assert "job-session" not in counting.folders[0] and not await trio.Path(counting.folders[0]).exists()
        for vm in ("web01", "web02"):
            records, outcome = await host.run_in_guest(
                vm, "Get-Content -Path 'C:\\Agent\\agent.ini'", lab.credential(vm)
            )
            assert outcome.ok
            assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["tier=gold"]

        # app01 has no Guest Service Interface: its run fails, and the folder still goes.
        runs = await _run(
            host, tmp_path / "bad.db", _copy_job(tmp_path / "bad", ["web01", "app01"]), lab.credential()
        )
        assert runs == {"web01": State.SUCCESS, "app01": State.FAILED}
        assert len(counting.folders) == 2
        assert not await trio.Path(counting.folders[1]).exists()
        assert list(sshd.staging_root.iterdir()) == []


async def test_a_cancelled_job_removes_its_staging_folder(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    lab = make_lab()
    sshd.use_lab(lab.path)
    job = _copy_job(
        tmp_path, ["web01"], {"kind": "script", "name": "wait", "inline": "Start-Sleep -Seconds 60"}
    )
    created: list[int] = []
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        counting = CountingStager(host.stager)
        host.stager = counting
        async with (
            open_engine(
                host,
                Journal(tmp_path / "cancel.db"),
                credential_for=lambda _: lab.credential(),
                options=EngineOptions(heartbeat_interval=0.1),
            ) as engine,
            trio.open_nursery() as nursery,
        ):
            results: list[Any] = []

            async def run() -> None:
                results.append(await engine.run_job(job, on_created=created.append))

            nursery.start_soon(run)
            with trio.fail_after(20):
                await counting.put_done.wait()
            await trio.sleep(0.3)  # the copy is done and the script is running
            engine.cancel(created[0])
        assert results[0].runs == {"web01": State.CANCELLED}
        assert not await trio.Path(counting.folders[0]).exists()
        assert list(sshd.staging_root.iterdir()) == []


async def test_the_agent_s_vm_listing_cache_keeps_a_remote_host_staging(
    sshd: Sshd, make_lab: Callable[..., Any], tmp_path: Path
) -> None:
    """The agent caches the host's VM listing; the host it runs jobs on must stay the remote one."""
    lab = make_lab()
    sshd.use_lab(lab.path)
    (tmp_path / "ok").mkdir()
    async with open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)) as host:
        counting = CountingStager(host.stager)
        host.stager = counting
        cached = host.cache_listing(ttl=60.0)
        assert cached.is_remote
        listed = [vm.name for vm in await cached.list_vms()]
        assert [vm.name for vm in await cached.list_vms()] == listed  # from the copy
        runs = await _run(cached, tmp_path / "ok.db", _copy_job(tmp_path / "ok", ["web01"]), lab.credential())
        assert runs == {"web01": State.SUCCESS}
        assert len(counting.folders) == 1, "the copy was staged on the remote host"
