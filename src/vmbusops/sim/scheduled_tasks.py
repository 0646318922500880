"""The simulated guest's Task Scheduler: the ScheduledTasks cmdlets and a task that runs a script.

Tasks live in ``<guest root>/tasks.json`` beside ``system.json`` (no guest script sees the file).
The cmdlets of the guest subset: ``New-ScheduledTaskAction``, ``New-ScheduledTaskPrincipal``,
``Register-ScheduledTask``, ``Get-ScheduledTask``, ``Get-ScheduledTaskInfo``, ``Start-ScheduledTask``
and ``Unregister-ScheduledTask``.

What a task can run: ``powershell.exe ... -File <path> [-Name value ...]`` where the file holds a
script the simulator knows (``TASK_SCRIPTS`` in ``vmbusops.sim.cmdlets``, keyed by the SHA-256 of its text as
``Set-Content -Encoding UTF8`` leaves it: less the BOM and the final newline). It runs when the task
is started, in the task's own logon - a local one, not a remote session - as the task's principal
(``NT AUTHORITY\\SYSTEM`` for the patch step). Anything else is not pretended: the task ends at once
with ``LastTaskResult`` 0x1 and ``Start-ScheduledTask`` writes an error record that says the
simulator cannot run that action. Tasks Windows ships that the simulator models
(``BUILT_IN_TASKS`` in ``vmbusops.sim.cmdlets``: DSC's ``\\Microsoft\\Windows\\Desired State Configuration\\Consistency``,
which starts an LCM consistency check) are there from the first look and do what they do. The task then reads ``Running`` for a short while
(:data:`RUN_SECONDS` per result line it wrote) and ``Ready`` after, as a poller on Windows sees it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from vmbusops.sim import pserrors
from vmbusops.sim.binding import Param
from vmbusops.sim.guest_stage import Stage
from vmbusops.sim.guest_values import NO_INPUT, StatementError, enumerate_value, to_text
from vmbusops.sim.streams import SimError, SimObject

if TYPE_CHECKING:
    from vmbusops.sim.guest import GuestSession

TASKS_FILE: Final = "tasks.json"
#: How long a started task stays Running, per unit of work it reports.
RUN_SECONDS: Final = 0.05
#: What "the task has not yet run" reads as (SCHED_S_TASK_HAS_NOT_RUN).
NOT_YET_RUN: Final = 0x41303
SYSTEM_NAMES: Final = frozenset({"system", "nt authority\\system", "s-1-5-18", "localsystem"})
_NS = "Microsoft.Management.Infrastructure.CimInstance#Root/Microsoft/Windows/TaskScheduler"

#: A task's script run natively: (session, the task's -Name value arguments, the principal) ->
#: (exit code, units of work done).
TaskScript = Callable[["GuestSession", dict[str, str], str], Awaitable[tuple[int, int]]]
#: What starting a task Windows ships does: (session) -> (exit code, units of work done).
BuiltInTaskStart = Callable[["GuestSession"], Awaitable[tuple[int, int]]]


@dataclass
class SimTask:
    name: str
    path: str
    execute: str
    arguments: str
    user_id: str
    logon_type: str = "ServiceAccount"
    run_level: str = "Highest"
    state: str = "Ready"
    last_result: int = NOT_YET_RUN
    running_until: float = 0.0

    @property
    def key(self) -> str:
        return (self.path + self.name).casefold()


@dataclass
class TaskStore:
    tasks: list[SimTask] = field(default_factory=list)

    def find(self, name: str, path: str | None) -> SimTask | None:
        for task in self.tasks:
            if task.name.casefold() == name.casefold() and (path is None or task.path.casefold() == path.casefold()):
                return task
        return None


def load_tasks(session: GuestSession) -> TaskStore:
    """The guest's tasks; before anything was registered, the tasks Windows ships."""
    try:
        raw = json.loads((session.root / TASKS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return TaskStore([dataclasses.replace(task) for task, _ in session.catalog.built_in_tasks.values()])
    return TaskStore([SimTask(**t) for t in raw.get("tasks", [])])


def save_tasks(session: GuestSession, tasks: TaskStore) -> None:
    path = session.root / TASKS_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tasks-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"tasks": [asdict(t) for t in tasks.tasks]}, indent=1))
    os.replace(tmp, path)


def settle(task: SimTask, now: float) -> SimTask:
    if task.state == "Running" and now >= task.running_until:
        task.state = "Ready"
    return task


def normalise_path(path: str | None) -> str:
    path = path or "\\"
    if not path.startswith("\\"):
        path = "\\" + path
    return path if path.endswith("\\") else path + "\\"


def script_text(data: bytes) -> str:
    """A script file's text as Set-Content -Encoding UTF8 wrote it: less the BOM and last newline."""
    text = data.decode("utf-8-sig")
    return text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")


_FILE_ARG = re.compile(r"(?i)^-file$")


def _command_line(arguments: str) -> list[str]:
    try:
        return shlex.split(arguments, posix=True)
    except ValueError:
        return []


async def run_task(session: GuestSession, task: SimTask) -> SimError | None:
    """Start ``task``: run its script natively if the simulator knows it; the error if it cannot."""
    now = session.store.clock()
    task.state = "Running"
    built_in = session.catalog.built_in_tasks.get(task.key)
    if built_in is not None and built_in[0].execute == task.execute and built_in[0].arguments == task.arguments:
        code, units = await built_in[1](session)
        task.last_result = code
        task.running_until = session.store.clock() + RUN_SECONDS * max(1, units)
        return None
    words = _command_line(task.arguments.replace("\\", "\\\\"))
    exe = task.execute.replace("/", "\\").rsplit("\\", 1)[-1].casefold()
    file_at = next((i for i, w in enumerate(words) if _FILE_ARG.match(w)), None)
    script: TaskScript | None = None
    named: dict[str, str] = {}
    if exe == "powershell.exe" and file_at is not None and file_at + 1 < len(words):
        host = session.host_path(words[file_at + 1])
        if host is not None and host.is_file():
            digest = hashlib.sha256(script_text(host.read_bytes()).encode("utf-8")).hexdigest()
            script = session.catalog.task_scripts.get(digest)
        rest = words[file_at + 2 :]
        for i in range(0, len(rest) - 1, 2):
            if rest[i].startswith("-"):
                named[rest[i][1:].casefold()] = rest[i + 1]
    if script is None:
        task.last_result = 1
        task.running_until = now
        return pserrors.not_supported_in_guest(
            f"running the scheduled task action '{task.execute} {task.arguments}' (a task runs only the "
            "scripts vmbusops.sim.scheduled_tasks lists)"
        )
    code, units = await script(session, named, task.user_id)
    task.last_result = code
    task.running_until = session.store.clock() + RUN_SECONDS * max(1, units)
    return None


# --- cmdlets ----------------------------------------------------------------------------------


def _task_object(task: SimTask) -> SimObject:
    return SimObject(
        (f"{_NS}/MSFT_ScheduledTask", "Microsoft.Management.Infrastructure.CimInstance", "System.Object"),
        (
            ("TaskName", task.name),
            ("TaskPath", task.path),
            ("State", task.state),
            ("Actions", [_action(task.execute, task.arguments)]),
            ("Principal", _principal(task.user_id, task.logon_type, task.run_level)),
        ),
        "MSFT_ScheduledTask (TaskName = \"" + task.name + "\", TaskPath = \"" + task.path + "\")",
    )


def _action(execute: str, arguments: str) -> SimObject:
    return SimObject(
        (f"{_NS}/MSFT_TaskExecAction", "Microsoft.Management.Infrastructure.CimInstance", "System.Object"),
        (("Execute", execute), ("Arguments", arguments or None), ("WorkingDirectory", None)),
        "MSFT_TaskExecAction",
    )


def _principal(user: str, logon: str, level: str) -> SimObject:
    return SimObject(
        (f"{_NS}/MSFT_TaskPrincipal2", "Microsoft.Management.Infrastructure.CimInstance", "System.Object"),
        (("UserId", user), ("LogonType", logon), ("RunLevel", level)),
        "MSFT_TaskPrincipal2",
    )


def _task_not_found(name: str, cmdlet: str) -> SimError:
    return SimError(
        message=f"No MSFT_ScheduledTask objects found with property 'TaskName' equal to '{name}'.  Verify the "
        "value of the property and retry.",
        fqid=f"CmdletizationQuery_NotFound_TaskName,{cmdlet}",
        category="ObjectNotFound",
        exception_type="Microsoft.PowerShell.Cmdletization.Cim.CimJobException",
        target_object=name,
    )


class NewScheduledTaskAction(Stage):
    name = "New-ScheduledTaskAction"
    fq_name = "New-ScheduledTaskAction"
    params = (Param("Execute", 0), Param("Argument", 1), Param("WorkingDirectory", 2))

    async def process(self, item: Any) -> None:
        self.require("Execute")
        await self.emit(_action(to_text(self.arg("Execute")), to_text(self.arg("Argument"))))


class NewScheduledTaskPrincipal(Stage):
    name = "New-ScheduledTaskPrincipal"
    fq_name = "New-ScheduledTaskPrincipal"
    params = (Param("UserId", 0), Param("LogonType"), Param("RunLevel"), Param("GroupId"))

    async def process(self, item: Any) -> None:
        self.require("UserId")
        await self.emit(
            _principal(
                to_text(self.arg("UserId")),
                to_text(self.arg("LogonType", "Interactive")),
                to_text(self.arg("RunLevel", "Limited")),
            )
        )


class _TaskCmdlet(Stage):
    def tasks(self) -> TaskStore:
        store = load_tasks(self.session)
        now = self.session.store.clock()
        for task in store.tasks:
            settle(task, now)
        return store

    def save(self, tasks: TaskStore) -> None:
        save_tasks(self.session, tasks)

    def target(self, tasks: TaskStore, item: Any) -> SimTask | None:
        path: str | None
        if isinstance(item, SimObject) and item.get("TaskName") is not None:
            name, path = to_text(item.get("TaskName")), to_text(item.get("TaskPath"))
        else:
            self.require("TaskName")
            name = to_text(self.arg("TaskName"))
            path = normalise_path(to_text(self.arg("TaskPath"))) if self.arg("TaskPath") is not None else None
        found = tasks.find(name, path)
        if found is None:
            self.streams.error(_task_not_found(name, self.name))
        return found


class RegisterScheduledTask(_TaskCmdlet):
    name = "Register-ScheduledTask"
    fq_name = "Register-ScheduledTask"
    params = (
        Param("TaskName", 0),
        Param("TaskPath", 1),
        Param("Action", 2),
        Param("Principal"),
        Param("Settings"),
        Param("Trigger"),
        Param("User"),
        Param("RunLevel"),
        Param("Description"),
        Param("Force", switch=True),
    )

    async def process(self, item: Any) -> None:
        self.require("TaskName", "Action")
        actions = enumerate_value(self.arg("Action"))
        if len(actions) != 1 or not isinstance(actions[0], SimObject) or actions[0].get("Execute") is None:
            raise StatementError(pserrors.not_supported_in_guest("a scheduled task with other than one exec action"))
        principal = self.arg("Principal")
        user = to_text(principal.get("UserId")) if isinstance(principal, SimObject) else to_text(self.arg("User"))
        if not user:
            user = self.session.username
        tasks = self.tasks()
        task = SimTask(
            name=to_text(self.arg("TaskName")),
            path=normalise_path(to_text(self.arg("TaskPath"))),
            execute=to_text(actions[0].get("Execute")),
            arguments=to_text(actions[0].get("Arguments")),
            user_id=user,
            logon_type=to_text(principal.get("LogonType")) if isinstance(principal, SimObject) else "Password",
            run_level=to_text(principal.get("RunLevel")) if isinstance(principal, SimObject) else "Limited",
        )
        existing = tasks.find(task.name, task.path)
        if existing is not None:
            if not self.switch("Force"):
                raise StatementError(
                    SimError(
                        message="Cannot create a file when that file already exists.",
                        fqid="HRESULT 0x800700b7,Register-ScheduledTask",
                        category="ResourceExists",
                        exception_type="Microsoft.Management.Infrastructure.CimException",
                        target_object=task.name,
                    )
                )
            tasks.tasks.remove(existing)
        tasks.tasks.append(task)
        self.save(tasks)
        await self.emit(_task_object(task))


class GetScheduledTask(_TaskCmdlet):
    name = "Get-ScheduledTask"
    fq_name = "Get-ScheduledTask"
    params = (Param("TaskName", 0), Param("TaskPath", 1))

    async def process(self, item: Any) -> None:
        tasks = self.tasks()
        if self.arg("TaskName") is None:
            path = normalise_path(to_text(self.arg("TaskPath"))) if self.arg("TaskPath") is not None else None
            for task in tasks.tasks:
                if path is None or task.path.casefold() == path.casefold():
                    await self.emit(_task_object(task))
            return
        found = self.target(tasks, NO_INPUT)
        if found is not None:
            await self.emit(_task_object(found))


class GetScheduledTaskInfo(_TaskCmdlet):
    name = "Get-ScheduledTaskInfo"
    fq_name = "Get-ScheduledTaskInfo"
    params = (Param("TaskName", 0), Param("TaskPath", 1), Param("InputObject"))

    async def process(self, item: Any) -> None:
        task = self.target(self.tasks(), item if item is not NO_INPUT else self.arg("InputObject", NO_INPUT))
        if task is not None:
            await self.emit(
                SimObject(
                    (f"{_NS}/MSFT_TaskDynamicInfo", "Microsoft.Management.Infrastructure.CimInstance", "System.Object"),
                    (("TaskName", task.name), ("TaskPath", task.path), ("LastTaskResult", task.last_result)),
                    "MSFT_TaskDynamicInfo",
                )
            )


class StartScheduledTask(_TaskCmdlet):
    name = "Start-ScheduledTask"
    fq_name = "Start-ScheduledTask"
    params = (Param("TaskName", 0), Param("TaskPath", 1), Param("InputObject"))

    async def process(self, item: Any) -> None:
        tasks = self.tasks()
        task = self.target(tasks, item if item is not NO_INPUT else self.arg("InputObject", NO_INPUT))
        if task is None or task.state == "Running":
            return
        error = await run_task(self.session, task)
        self.save(tasks)
        if error is not None:
            self.streams.error(error)


class UnregisterScheduledTask(_TaskCmdlet):
    name = "Unregister-ScheduledTask"
    fq_name = "Unregister-ScheduledTask"
    params = (Param("TaskName", 0), Param("TaskPath", 1), Param("InputObject"), Param("Confirm"))

    async def process(self, item: Any) -> None:
        if self.arg("Confirm") is not False:
            raise StatementError(pserrors.not_supported_in_guest("Unregister-ScheduledTask without -Confirm:$false (a prompt)"))
        tasks = self.tasks()
        found = self.target(tasks, item if item is not NO_INPUT else self.arg("InputObject", NO_INPUT))
        if found is not None:
            tasks.tasks.remove(found)
            self.save(tasks)


__all__ = [
    "SYSTEM_NAMES",
    "BuiltInTaskStart",
    "SimTask",
    "TaskScript",
    "load_tasks",
    "normalise_path",
    "run_task",
    "save_tasks",
    "script_text",
]
