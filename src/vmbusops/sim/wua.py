"""The simulated Windows Update Agent, for the patch step's two scripts.

The guest PowerShell subset has no COM, so ``New-Object -ComObject Microsoft.Update.Session``
cannot run. Instead the simulator recognises the patch step's exact scripts by the SHA-256 of
their text (pinned by a test against ``vmbusops.guestops.patch_script``; the scripts are listed in
``vmbusops.sim.cmdlets``) and runs simulated equivalents over the lab's pending ``updates`` minus
those already installed:

- :data:`PATCH_SCRIPT_SHA256`, run in the PowerShell Direct session: ``check`` searches (allowed
  from a remote session) and lists; ``install`` does what the script does - writes the install
  script it was given and a request to ``C:\\ProgramData\\vmbusops\\wua\\<id>``, registers and starts a
  SYSTEM scheduled task (``vmbusops.sim.scheduled_tasks``, the same model the ScheduledTasks
  cmdlets use), relays the task's result lines, and removes the task and the folder.
- :data:`INSTALL_SCRIPT_SHA256`, the task's script: as a scheduled task it searches, downloads
  and installs, writing ``results.jsonl``. Run in a remote session instead (``& install.ps1`` over
  PowerShell Direct) its first Download is refused with E_ACCESSDENIED (0x80070005), as Microsoft
  documents for IUpdateDownloader and IUpdateInstaller, and nothing is installed.

Any other text goes through the ordinary interpreter, where ``New-Object`` is reported as
unsupported, and a task whose file is not the install script does not run: the simulator never
pretends to run a script it does not know.

An installed update that needs a restart makes the guest report a pending reboot until the VM has
been restarted (``vmbusops.sim.guest_system``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio
import trio.lowlevel

from vmbusops.sim.guest_system import ask_for_reboot, load_system, save_system
from vmbusops.sim.guest_values import Emit, to_int, to_text
from vmbusops.sim.lab import UpdateSpec
from vmbusops.sim.scheduled_tasks import SimTask, load_tasks, run_task, save_tasks
from vmbusops.sim.streams import ProgressUpdate, SimError, SimObject

if TYPE_CHECKING:
    from vmbusops.sim.guest import GuestSession

PATCH_SCRIPT_SHA256: Final = "0a5a86d2e1bcacdcd56ac71c241926d09ec51392a316e20054444c363a4bc4fb"
INSTALL_SCRIPT_SHA256: Final = "d9e33381a39bed4e8dd591e462befc0d3b80a2225c8217826ee31aa644f5837c"
WUA_FOLDER: Final = "C:\\ProgramData\\vmbusops\\wua"
TASK_PATH: Final = "\\vmbusops\\"
E_ACCESSDENIED: Final = -2147024891  # 0x80070005
_CUSTOM = ("System.Management.Automation.PSCustomObject", "System.Object")
_RESULT_NAMES = {2: "Succeeded", 3: "SucceededWithErrors", 4: "Failed", 5: "Aborted"}


def _csv(value: Any) -> list[str]:
    return [p.strip() for p in to_text(value).split(",") if p.strip()]


def select_updates(session: GuestSession, categories: str, kbs: str) -> list[UpdateSpec]:
    """IUpdateSearcher.Search("IsInstalled=0 ..."), narrowed as the scripts narrow it."""
    wanted_categories = {c.casefold() for c in _csv(categories)}
    wanted_kbs = {k.upper().removeprefix("KB") for k in _csv(kbs)}
    installed = {k.upper() for k in load_system(session.store, session.spec).updates_installed}
    return [
        u
        for u in session.spec.updates
        if u.kb.upper() not in installed
        and (not wanted_categories or any(c.casefold() in wanted_categories for c in u.categories))
        and (not wanted_kbs or u.kb.upper().removeprefix("KB") in wanted_kbs)
    ]


def access_denied(method: str) -> SimError:
    """What PowerShell reports when a WUA method refuses a remote session."""
    return SimError(
        message=f'Exception calling "{method}" with "0" argument(s): "Exception from HRESULT: 0x80070005 (E_ACCESSDENIED)"',
        fqid="ComMethodTargetInvocation",
        category="NotSpecified",
        exception_type="System.Management.Automation.MethodInvocationException",
        hresult=E_ACCESSDENIED,
    )


# --- the task's script: install.ps1 ------------------------------------------------------------


class _Results:
    """``results.jsonl`` as the install script's Add-Content -Encoding UTF8 writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\r\n"
        prefix = b"" if self.path.exists() else b"\xef\xbb\xbf"
        with self.path.open("ab") as fh:
            fh.write(prefix + line.encode("utf-8"))
        self.lines += 1


async def run_install(session: GuestSession, folder: str, *, remote: bool) -> tuple[int, int]:
    """The install script over ``folder``; (exit code, result lines). ``remote``: run from a
    PowerShell Direct session, where the WUA refuses Download (the task runs it locally)."""
    host = session.host_path(folder)
    if host is None or not host.is_dir():
        session.streams.error(
            SimError(
                message=f"Cannot find path '{folder}' because it does not exist.",
                fqid="PathNotFound,Microsoft.PowerShell.Commands.GetContentCommand",
                category="ObjectNotFound",
                exception_type="System.Management.Automation.ItemNotFoundException",
            )
        )
        return 1, 0
    results = _Results(host / "results.jsonl")
    try:
        request = json.loads((host / "request.json").read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError) as exc:
        results.write({"Kind": "error", "Message": f"request.json: {exc}", "HResult": -2146233087})
        return 1, results.lines
    system = load_system(session.store, session.spec)
    results.write({"Kind": "progress", "Status": "Searching for updates", "KB": None, "Percent": 0})
    selected = select_updates(session, to_text(request.get("Categories")), to_text(request.get("KBs")))
    installed = failed = 0
    reboot = False
    for n, update in enumerate(selected, start=1):
        percent = int(100 * (n - 1) / len(selected))
        results.write({"Kind": "progress", "Status": f"{n} of {len(selected)}: downloading", "KB": update.kb, "Percent": percent})
        await trio.lowlevel.checkpoint()
        if remote:
            error = access_denied("Download")
            results.write({"Kind": "error", "Message": error.message, "HResult": E_ACCESSDENIED})
            session.streams.error(error)
            return 1, results.lines
        results.write({"Kind": "progress", "Status": f"{n} of {len(selected)}: installing", "KB": update.kb, "Percent": percent})
        system.updates_installed.append(update.kb)
        installed += 1
        reboot = reboot or update.restart
        results.write(
            {
                "Kind": "update",
                "KB": update.kb,
                "Title": update.title,
                "Categories": ", ".join(update.categories),
                "Result": _RESULT_NAMES[2],
                "RebootRequired": update.restart,
                "HResult": 0,
            }
        )
    if reboot:
        ask_for_reboot(session.store, session.spec, system)
    save_system(session.store, session.spec, system)
    results.write({"Kind": "summary", "Found": len(selected), "Installed": installed, "Failed": failed, "RebootRequired": reboot})
    return 0, results.lines


async def run_install_in_session(session: GuestSession, emit: Emit) -> int:
    """install.ps1 run straight in the PowerShell Direct session (``-Folder`` is its argument)."""
    args = list(session.variables.get("args") or [])
    folder = to_text(args[1] if len(args) > 1 and to_text(args[0]).casefold() == "-folder" else args[0] if args else "")
    code, _ = await run_install(session, session.absolute(folder), remote=True)
    return code


async def run_install_as_task(session: GuestSession, named: dict[str, str], principal: str) -> tuple[int, int]:
    return await run_install(session, session.absolute(named.get("folder", "")), remote=False)


# --- the remote session's script: the patch step -----------------------------------------------


async def run_patch_script(session: GuestSession, emit: Emit) -> int:
    args = list(session.variables.get("args") or [])
    mode = to_text(args[0]) if args else "install"
    categories = to_text(args[1]) if len(args) > 1 else ""
    kbs = to_text(args[2]) if len(args) > 2 else ""
    install_text = to_text(args[4]) if len(args) > 4 else ""
    streams = session.streams

    def progress(status: str, percent: int, current: str | None = None, completed: bool = False) -> None:
        streams.progress(
            ProgressUpdate(
                activity="Windows Update",
                status=status,
                percent_complete=percent,
                current_operation=current,
                completed=completed,
            )
        )

    if mode.casefold() == "check":
        progress("Searching for updates", 0)
        await streams.checkpoint()
        selected = select_updates(session, categories, kbs)
        for n, update in enumerate(selected, start=1):
            progress(f"{n} of {len(selected)}: would install", int(100 * (n - 1) / len(selected)), update.kb)
            await emit(_result(update.kb, update.title, ", ".join(update.categories), "Pending", False))
        progress("Completed", 100, completed=True)
        await emit(_summary(len(selected), 0, 0, False))
        return 0

    run_id = uuid.uuid4().hex
    folder = f"{WUA_FOLDER}\\{run_id}"
    host = session.host_path(folder)
    assert host is not None
    task = SimTask(
        name=f"vmbusops-wua-{run_id}",
        path=TASK_PATH,
        execute="powershell.exe",
        arguments=f'-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{folder}\\install.ps1" -Folder "{folder}"',
        user_id="NT AUTHORITY\\SYSTEM",
    )
    summary: dict[str, Any] | None = None
    try:
        host.mkdir(parents=True, exist_ok=True)
        # Set-Content -Encoding UTF8 on Windows PowerShell 5.1: a BOM, the text, a newline.
        (host / "install.ps1").write_bytes(b"\xef\xbb\xbf" + (install_text + "\r\n").encode("utf-8"))
        request = json.dumps({"Categories": categories, "KBs": kbs}, indent=4).replace("\n", "\r\n")
        (host / "request.json").write_bytes(b"\xef\xbb\xbf" + (request + "\r\n").encode("utf-8"))
        tasks = load_tasks(session)
        tasks.tasks.append(task)
        save_tasks(session, tasks)
        progress(f"Installing as SYSTEM (scheduled task {TASK_PATH}{task.name})", 0)
        error = await run_task(session, task)
        if error is not None:
            streams.error(error)
        # The task has run by now (the simulated one runs when started), so one read sees it all.
        for line in _read_lines(host / "results.jsonl"):
            entry = json.loads(line)
            kind = entry.get("Kind")
            if kind == "progress":
                progress(str(entry["Status"]), to_int(entry["Percent"]), entry.get("KB") or None)
            elif kind == "update":
                await emit(_result(entry["KB"], entry["Title"], entry["Categories"], entry["Result"], bool(entry["RebootRequired"])))
            elif kind == "error":
                streams.error(
                    SimError(
                        message=f"Windows Update (as SYSTEM): {entry['Message']}",
                        fqid="VmbusOpsWindowsUpdateFailed",
                        category="NotSpecified",
                        exception_type="Microsoft.PowerShell.Commands.WriteErrorException",
                    )
                )
            elif kind == "summary":
                summary = entry
            await streams.checkpoint()
        if summary is None:
            streams.error(
                SimError(
                    message=f"the Windows Update task ended without a result (LastTaskResult 0x{task.last_result & 0xFFFFFFFF:08X})",
                    fqid="VmbusOpsWindowsUpdateTaskEnded",
                    category="NotSpecified",
                    exception_type="Microsoft.PowerShell.Commands.WriteErrorException",
                )
            )
            return 1
    finally:
        tasks = load_tasks(session)
        tasks.tasks = [t for t in tasks.tasks if t.key != task.key]
        save_tasks(session, tasks)
        _remove_tree(host)
    progress("Completed", 100, completed=True)
    await emit(
        _summary(int(summary["Found"]), int(summary["Installed"]), int(summary["Failed"]), bool(summary["RebootRequired"]))
    )
    return 0


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_bytes().decode("utf-8-sig").splitlines() if line.strip()]
    except OSError:
        return []


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def _result(kb: str, title: str, categories: str, result: str, reboot: bool) -> SimObject:
    return SimObject(
        _CUSTOM,
        (("KB", kb), ("Title", title), ("Categories", categories), ("Result", result), ("RebootRequired", reboot)),
    )


def _summary(found: int, installed: int, failed: int, reboot: bool) -> SimObject:
    return SimObject(
        _CUSTOM,
        (
            ("vmbusopsPatchSummary", True),
            ("Found", found),
            ("Installed", installed),
            ("Failed", failed),
            ("RebootRequired", reboot),
        ),
    )


__all__ = [
    "INSTALL_SCRIPT_SHA256",
    "PATCH_SCRIPT_SHA256",
    "access_denied",
    "run_install",
    "run_install_as_task",
    "run_install_in_session",
    "run_patch_script",
]
