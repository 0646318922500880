"""The guest subset's own cmdlets: the Write-* family, ForEach-Object, Start-Sleep, Get-Date, and what a
script asks a Windows guest about itself (services, processes, hotfixes), its restart, and
``hostname`` / ``cmd.exe``. File cmdlets are in ``vmbusops.sim.guest_files``; every cmdlet is
listed by name in ``vmbusops.sim.cmdlets``.
"""

from __future__ import annotations

import abc
import fnmatch
import re
from datetime import datetime
from typing import Any

import trio

from vmbusops.sim import pserrors
from vmbusops.sim.binding import Param
from vmbusops.sim.guest_stage import Stage, fq_name_of
from vmbusops.sim.guest_values import (
    NO_INPUT,
    GuestRestarting,
    ScriptBlockValue,
    StatementError,
    enumerate_value,
    member,
    to_float,
    to_int,
    to_text,
)
from vmbusops.sim.streams import InformationMessage, ProgressUpdate, SimError, SimObject


class WriteOutput(Stage):
    name = "Write-Output"
    fq_name = fq_name_of(name)
    params = (Param("InputObject", 0, aliases=("Object",)), Param("NoEnumerate", switch=True))

    async def process(self, item: Any) -> None:
        if item is NO_INPUT:
            value = self.arg("InputObject")
            if self.switch("NoEnumerate"):
                await self.emit(value)
            else:
                await self.out_all(value)
        else:
            await self.emit(item)



class _MessageWriter(Stage, abc.ABC):
    params = (Param("Message", 0, aliases=("Msg",)),)

    @abc.abstractmethod
    def write(self, message: str) -> None:
        """Send one message to this cmdlet's stream."""

    async def process(self, item: Any) -> None:
        message = self.arg("Message") if item is NO_INPUT else item
        self.write(to_text(message))
        await self.streams.checkpoint()


class WriteVerbose(_MessageWriter):
    name = "Write-Verbose"
    fq_name = fq_name_of(name)

    def write(self, message: str) -> None:
        self.streams.verbose(message)


class WriteWarning(_MessageWriter):
    name = "Write-Warning"
    fq_name = fq_name_of(name)

    def write(self, message: str) -> None:
        self.streams.warning(message)


class WriteDebug(_MessageWriter):
    name = "Write-Debug"
    fq_name = fq_name_of(name)

    def write(self, message: str) -> None:
        self.streams.debug(message)


class WriteError(Stage):
    name = "Write-Error"
    fq_name = fq_name_of(name)
    params = (
        Param("Message", 0, aliases=("Msg",)),
        Param("Category"),
        Param("ErrorId"),
        Param("TargetObject"),
    )

    async def process(self, item: Any) -> None:
        message = to_text(self.arg("Message") if item is NO_INPUT else item)
        error_id = self.arg("ErrorId")
        fqid = to_text(error_id) if error_id else "Microsoft.PowerShell.Commands.WriteErrorException"
        if self.session.script_file is not None:
            # Inside a script file PowerShell qualifies the id with the file's name (measured).
            fqid = f"{fqid},{self.session.script_file}"
        target = self.arg("TargetObject")
        self.streams.error(
            SimError(
                message=message,
                fqid=fqid,
                category=to_text(self.arg("Category", "NotSpecified")),
                exception_type="Microsoft.PowerShell.Commands.WriteErrorException",
                target_name="" if target is None else to_text(target),
                target_object=target,
                activity="Write-Error",
            )
        )
        await self.streams.checkpoint()


class WriteInformation(Stage):
    name = "Write-Information"
    fq_name = fq_name_of(name)
    params = (Param("MessageData", 0, aliases=("Msg", "Message")), Param("Tags", 1))

    async def process(self, item: Any) -> None:
        data = self.arg("MessageData") if item is NO_INPUT else item
        tags = tuple(to_text(t) for t in enumerate_value(self.arg("Tags")))
        self.streams.information(InformationMessage(message_data=data, source="Write-Information", tags=tags))
        await self.streams.checkpoint()


class WriteHost(Stage):
    """Write-Host: an information record tagged PSHOST, as PowerShell 5+ writes it (text only:
    the simulated guest keeps no colours)."""

    name = "Write-Host"
    fq_name = fq_name_of(name)
    params = (Param("Object", 0), Param("NoNewline", switch=True), Param("Separator"),
              Param("ForegroundColor"), Param("BackgroundColor"))

    async def process(self, item: Any) -> None:
        value = self.arg("Object") if item is NO_INPUT else item
        separator = to_text(self.arg("Separator", " "))
        text = separator.join(to_text(v) for v in enumerate_value(value)) if value is not None else ""
        self.streams.information(InformationMessage(message_data=text, source="Write-Host", tags=("PSHOST",)))
        await self.streams.checkpoint()


class WriteProgress(Stage):
    name = "Write-Progress"
    fq_name = fq_name_of(name)
    params = (
        Param("Activity", 0),
        Param("Status", 1),
        Param("Id", 2),
        Param("PercentComplete"),
        Param("SecondsRemaining"),
        Param("CurrentOperation"),
        Param("ParentId"),
        Param("Completed", switch=True),
    )

    async def process(self, item: Any) -> None:
        self.require("Activity")
        current = self.arg("CurrentOperation")
        self.streams.progress(
            ProgressUpdate(
                activity=to_text(self.arg("Activity")),
                status=to_text(self.arg("Status", "Processing")),
                activity_id=to_int(self.arg("Id", 0)),
                parent_activity_id=to_int(self.arg("ParentId", -1)),
                percent_complete=to_int(self.arg("PercentComplete", -1)),
                seconds_remaining=to_int(self.arg("SecondsRemaining", -1)),
                current_operation=None if current is None else to_text(current),
                completed=self.switch("Completed"),
            )
        )
        await self.streams.checkpoint()


class GetDate(Stage):
    """Get-Date -Format o: the guest's clock as round-trip text (a string, as -Format makes it),
    local time with its offset and 100 ns digits, ``2026-11-30T19:16:44.2124212+01:00``. The
    DateTime object and every other format are refused as unsupported."""

    name = "Get-Date"
    fq_name = fq_name_of(name)
    params = (Param("Date", 0), Param("Format"), Param("UFormat"), Param("DisplayHint"), Param("Year"),
              Param("Month"), Param("Day"), Param("Hour"), Param("Minute"), Param("Second"),
              Param("Millisecond"))  # fmt: skip

    async def process(self, item: Any) -> None:
        form = self.arg("Format")
        if set(self.bound) - {"Format"} or form is None or to_text(form) not in ("o", "O"):
            raise StatementError(pserrors.not_supported_in_guest("Get-Date other than 'Get-Date -Format o'"))
        now = datetime.fromtimestamp(self.session.store.clock()).astimezone()
        # .NET writes seven fraction digits; the clock has microseconds, so the last is 0.
        text = now.isoformat(timespec="microseconds")
        await self.emit(f"{text[:26]}0{text[26:]}")


class StartSleep(Stage):
    name = "Start-Sleep"
    fq_name = fq_name_of(name)
    params = (Param("Seconds", 0, aliases=("s",)), Param("Milliseconds", aliases=("ms",)))

    async def process(self, item: Any) -> None:
        seconds = to_float(self.arg("Seconds", 0)) + to_float(self.arg("Milliseconds", 0)) / 1000
        # Real sleeping, so latency is real and a Signal (stop) cancels it.
        await trio.sleep(max(0.0, seconds))


class ForEachObject(Stage):
    name = "ForEach-Object"
    fq_name = fq_name_of(name)
    params = (Param("Process", 0), Param("Begin"), Param("End"), Param("MemberName"))

    async def _run_block(self, block: Any, item: Any) -> None:
        if not isinstance(block, ScriptBlockValue):
            raise StatementError(pserrors.not_supported_in_guest("ForEach-Object without a script block"))
        saved = self.session.variables.get("_")
        self.session.variables["_"] = item
        try:
            await self.session.run_script(block.body, self.emit)
        finally:
            self.session.variables["_"] = saved

    async def begin(self) -> None:
        if "Begin" in self.bound:
            await self._run_block(self.bound["Begin"], None)

    async def process(self, item: Any) -> None:
        if item is NO_INPUT:
            return
        block = self.arg("Process", self.arg("MemberName"))
        if isinstance(block, str):
            await self.out_all(member(item, block))
            return
        await self._run_block(block, item)

    async def end(self) -> None:
        if "End" in self.bound:
            await self._run_block(self.bound["End"], None)


class GetService(Stage):
    name = "Get-Service"
    fq_name = fq_name_of(name)
    params = (Param("Name", 0, aliases=("ServiceName",)), Param("DisplayName"))

    async def process(self, item: Any) -> None:
        wanted = [to_text(n) for n in enumerate_value(self.arg("Name") if item is NO_INPUT else item)]
        services = self.session.spec.services
        if not wanted:
            for svc in services:
                await self.emit(service_object(svc.name, svc.display_name, svc.status.value))
            return
        for pattern in wanted:
            hits = [s for s in services if fnmatch.fnmatchcase(s.name.casefold(), pattern.casefold())]
            if not hits and not _has_wildcard(pattern):
                self.streams.error(
                    SimError(
                        message=f"Cannot find any service with service name '{pattern}'.",
                        fqid="NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand",
                        category="ObjectNotFound",
                        exception_type="Microsoft.PowerShell.Commands.ServiceCommandException",
                        target_name=pattern,
                        target_object=pattern,
                    )
                )
            for svc in hits:
                await self.emit(service_object(svc.name, svc.display_name, svc.status.value))


def service_object(name: str, display_name: str, status: str) -> SimObject:
    return SimObject(
        (
            "System.ServiceProcess.ServiceController",
            "System.ComponentModel.Component",
            "System.MarshalByRefObject",
            "System.Object",
        ),
        (("Name", name), ("ServiceName", name), ("DisplayName", display_name), ("Status", status)),
        "System.ServiceProcess.ServiceController",
    )


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


class GetProcess(Stage):
    name = "Get-Process"
    fq_name = fq_name_of(name)
    params = (Param("Name", 0, aliases=("ProcessName",)), Param("Id"))

    def _all(self) -> list[tuple[str, int]]:
        return [("System", 4), ("Idle", 0)] + [(p.name, p.id) for p in self.session.spec.processes]

    async def process(self, item: Any) -> None:
        procs = self._all()
        wanted = [to_text(n) for n in enumerate_value(self.arg("Name"))]
        if "Id" in self.bound:
            ids = [to_int(i) for i in enumerate_value(self.arg("Id"))]
            for pid in ids:
                hit = [p for p in procs if p[1] == pid]
                if not hit:
                    self.streams.error(
                        SimError(
                            message=f"Cannot find a process with the process identifier {pid}.",
                            fqid="NoProcessFoundForGivenId,Microsoft.PowerShell.Commands.GetProcessCommand",
                            category="ObjectNotFound",
                            exception_type="Microsoft.PowerShell.Commands.ProcessCommandException",
                            target_object=pid,
                        )
                    )
                for name, p in hit:
                    await self.emit(process_object(name, p))
            return
        if not wanted:
            for name, pid in procs:
                await self.emit(process_object(name, pid))
            return
        for pattern in wanted:
            hits = [p for p in procs if fnmatch.fnmatchcase(p[0].casefold(), pattern.casefold())]
            if not hits and not _has_wildcard(pattern):
                self.streams.error(
                    SimError(
                        message=f'Cannot find a process with the name "{pattern}". '
                        "Verify the process name and call the cmdlet again.",
                        fqid="NoProcessFoundForGivenName,Microsoft.PowerShell.Commands.GetProcessCommand",
                        category="ObjectNotFound",
                        exception_type="Microsoft.PowerShell.Commands.ProcessCommandException",
                        target_name=pattern,
                        target_object=pattern,
                    )
                )
            for name, pid in hits:
                await self.emit(process_object(name, pid))


def process_object(name: str, pid: int) -> SimObject:
    return SimObject(
        (
            "System.Diagnostics.Process",
            "System.ComponentModel.Component",
            "System.MarshalByRefObject",
            "System.Object",
        ),
        (("Name", name), ("ProcessName", name), ("Id", pid)),
        f"System.Diagnostics.Process ({name})",
    )



class GetHotFix(Stage):
    name = "Get-HotFix"
    fq_name = "Microsoft.PowerShell.Commands.GetHotFixCommand"
    params = (Param("Id", 0, aliases=("HFID",)),)

    async def process(self, item: Any) -> None:
        wanted = {to_text(i).casefold() for i in enumerate_value(self.arg("Id"))}
        for fix in self.session.spec.hotfixes:
            if wanted and fix.id.casefold() not in wanted:
                continue
            await self.emit(
                SimObject(
                    (
                        "System.Management.ManagementObject#root\\cimv2\\Win32_QuickFixEngineering",
                        "System.Management.ManagementObject",
                        "System.Object",
                    ),
                    (
                        ("Source", self.session.spec.guest_computer_name),
                        ("HotFixID", fix.id),
                        ("Description", fix.description),
                        ("InstalledOn", fix.installed_on),
                        ("InstalledBy", "NT AUTHORITY\\SYSTEM"),
                    ),
                    f"\\\\{self.session.spec.guest_computer_name}\\root\\cimv2:Win32_QuickFixEngineering"
                    f'.HotFixID="{fix.id}",ServicePackInEffect=""',
                )
            )
        missing = wanted - {f.id.casefold() for f in self.session.spec.hotfixes}
        for fix_id in sorted(missing):
            self.streams.error(
                SimError(
                    message="Cannot find the requested hotfix on the "
                    f"'{self.session.spec.guest_computer_name}' computer. "
                    "Verify the input and Run the command again.",
                    fqid=f"GetHotFixNoEntriesFound,{self.fq_name}",
                    category="ObjectNotFound",
                    exception_type="System.ArgumentException",
                    target_object=fix_id,
                )
            )


class RestartComputer(Stage):
    name = "Restart-Computer"
    fq_name = fq_name_of(name)
    params = (Param("Force", switch=True), Param("ComputerName", 0))

    async def process(self, item: Any) -> None:
        spec = self.session.spec
        boot = self.session.store.lab.host.boot_seconds
        clock = self.session.store.clock
        self.session.store.update(spec, lambda rt: rt.started(clock(), boot))
        # The guest goes down under the session: nothing after this statement runs.
        raise GuestRestarting(0)


class SetExecutionPolicy(Stage):
    """The simulated guest has no execution policy: accepted, changes nothing."""

    name = "Set-ExecutionPolicy"
    fq_name = fq_name_of(name, "Microsoft.PowerShell.Security")
    params = (Param("ExecutionPolicy", 0), Param("Scope", 1), Param("Force", switch=True))



class Hostname(Stage):
    name = "hostname"
    fq_name = "hostname.exe"

    async def process(self, item: Any) -> None:
        await self.emit(self.session.spec.guest_computer_name)


class CmdExe(Stage):
    """``cmd.exe /c "..."``: a native command, as Windows PowerShell 5.1 remoting delivers one.

    What it models is what native tools do to a PowerShell Direct session: stdout lines are output
    strings; each stderr line becomes an error record (the first ``NativeCommandError``, the rest
    ``NativeCommandErrorMessage``, exception RemoteException, target the line), which the script's
    ``$ErrorActionPreference = 'Stop'`` makes terminating, as in Windows PowerShell 5.1 (PowerShell
    7.2 and later leave native stderr alone); the exit code sets ``$LASTEXITCODE``. Of cmd's
    language it runs ``echo TEXT``, ``echo TEXT 1>&2`` (or ``>&2``) and ``exit /b N``, joined with
    ``&`` or ``&&``; anything else is refused as unsupported, never faked.
    """

    name = "cmd.exe"
    fq_name = "cmd.exe"
    params = (Param("Switch", 0), Param("Command", 1))

    async def process(self, item: Any) -> None:
        switch = to_text(self.bound.get("Switch") or "").casefold()
        if switch not in ("/c", "/s"):
            raise StatementError(pserrors.not_supported_in_guest(f"cmd.exe {switch or 'without /c'}"))
        code, stderr_lines = 0, 0
        # `&` joins commands, except where it is part of a redirection such as `1>&2`.
        for part in re.split(r"(?<!>)&&?", to_text(self.bound.get("Command") or "")):
            command = part.strip()
            exited = re.fullmatch(r"exit\s+/b\s+(-?[0-9]+)", command, re.IGNORECASE)
            if exited:
                code = int(exited[1])
                break
            echo = re.fullmatch(r"echo\s+(.*?)\s*(1?>&2)?", command, re.IGNORECASE | re.DOTALL)
            if echo is None:
                raise StatementError(pserrors.not_supported_in_guest(f"the cmd.exe command {command!r}"))
            if echo[2]:
                stderr_lines += 1
                self.streams.error(
                    SimError(
                        message=echo[1],
                        fqid="NativeCommandError" if stderr_lines == 1 else "NativeCommandErrorMessage",
                        category="NotSpecified",
                        exception_type="System.Management.Automation.RemoteException",
                        target_name=echo[1],
                        target_object=echo[1],
                    )
                )
            else:
                await self.emit(echo[1])
            await self.streams.checkpoint()
        self.session.variables["lastexitcode"] = code

